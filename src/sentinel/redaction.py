"""Keep secrets out of everything we write: logs, reports, exception messages.

The Roboflow SDK puts the API key in query strings, so any URL it logs or puts in an exception would leak
it. Secrets are read from the environment only, and every log handler gets a filter that masks their values.
"""

from __future__ import annotations

import logging
import os
import re

ROBOFLOW_KEY_ENV = "ROBOFLOW_API_KEY"
_SECRET_NAME = re.compile(r"(API_KEY|TOKEN|SECRET|PASSWORD)$", re.IGNORECASE)
# Only as a URL query parameter: "export ROBOFLOW_API_KEY=<your key>" in a hint is not a secret.
_KEY_IN_URL = re.compile(r"([?&]api_key=)[^&\s'\"]+", re.IGNORECASE)
MASK = "***"


def secret_values() -> list[str]:
    """Values of environment variables whose names look secret (long enough to be worth masking)."""
    return [v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 4]


def redact(text: str) -> str:
    """Mask every known secret value and any `api_key=` query parameter in `text`."""
    for value in secret_values():
        text = text.replace(value, MASK)
    return _KEY_IN_URL.sub(r"\1" + MASK, text)


class RedactingFilter(logging.Filter):
    """A handler filter: formats the record once, masks secrets, and freezes the result."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Attach the filter to every handler of `logger` (root by default): handler filters see all records."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
