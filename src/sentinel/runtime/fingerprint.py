"""Stable content hashes for cache keys: same inputs, same key, on every machine and Python run."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def stable_hash(value: Any, length: int = 16) -> str:
    """Hash JSON-able data (OmegaConf nodes included) independently of dict order."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()[:length]
