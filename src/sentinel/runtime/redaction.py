"""Keep secrets out of everything we write: logs, reports, exception messages.

The Roboflow SDK puts the API key in query strings, so any URL it logs or puts in an exception would leak
it; a database or tracking URL may carry a password (`user:pw@host`). Secrets are read from the environment
only, and every log handler gets a filter that masks their values and any password in a URL.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

ROBOFLOW_KEY_ENV = "ROBOFLOW_API_KEY"
_SECRET_NAME = re.compile(r"(API_KEY|TOKEN|SECRET|PASSWORD)$", re.IGNORECASE)
# Only as a URL query parameter: "export ROBOFLOW_API_KEY=<your key>" in a hint is not a secret.
_KEY_IN_URL = re.compile(r"([?&]api_key=)[^&\s'\"]+", re.IGNORECASE)
# A password in a URL's user info: `postgresql://user:pw@host`, `http://user:pw@mlflow:5000`, `mongodb://u:pw@db`.
PASSWORD_IN_URL = re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^/\s:@'\"]+:)[^@\s/'\"]+(@)", re.IGNORECASE)
MASK = "***"


def secret_values() -> list[str]:
    """Values of environment variables whose names look secret (long enough to be worth masking)."""
    return [v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 4]


def redact(text: str) -> str:
    """Mask every known secret value, any `api_key=` query parameter and any password in a URL in `text`."""
    for value in secret_values():
        text = text.replace(value, MASK)
    text = PASSWORD_IN_URL.sub(r"\1" + MASK + r"\2", text)
    return _KEY_IN_URL.sub(r"\1" + MASK, text)


def has_password_in_url(text: str) -> bool:
    return bool(PASSWORD_IN_URL.search(text))


def url_secret_fix(key: str) -> str:
    """Where a URL's password belongs instead of the config: the environment variable its library reads."""
    if key.endswith("database_uri"):
        return f"leave {key} empty and export FIFTYONE_DATABASE_URI=<the uri> (FiftyOne reads it)"
    if key.startswith("tracking."):
        return (
            f"give {key} without user and password, and export MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (MLflow reads them)"
        )
    return f"give {key} without its password, from an environment variable of the library that reads it"


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


def password_in_config(container: Any, prefix: str = "") -> str:
    """The dotted key of the first config value that is a URL with a password, else ''."""
    if isinstance(container, dict):
        for key, value in container.items():
            found = password_in_config(value, f"{prefix}{key}.")
            if found:
                return found
        return ""
    if isinstance(container, list):
        return next((k for i, v in enumerate(container) if (k := password_in_config(v, f"{prefix}{i}."))), "")
    return prefix.rstrip(".") if isinstance(container, str) and has_password_in_url(container) else ""


def scrub_files(paths: list[Path]) -> None:
    """Rewrite each file with its secrets masked (a temporary name renamed into place), where it holds any.

    For what another library wrote before Sentinel's code ran: Hydra saves .hydra/*.yaml (and a sweep's
    multirun.yaml) before it calls the task function.
    """
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        cleaned = redact(text)
        if cleaned != text:
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text(cleaned, encoding="utf-8")
            os.replace(tmp, path)
