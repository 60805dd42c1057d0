"""Stable content hashes for cache keys: same inputs, same key, on every machine and Python run."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sentinel.config.plain import plain


def stable_hash(value: Any, length: int = 16) -> str:
    """Hash JSON-able data (settings dataclasses and OmegaConf nodes included) independently of dict order."""
    text = json.dumps(plain(value), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()[:length]
