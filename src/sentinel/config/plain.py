"""Settings as plain built-ins, whichever form they come in.

Stages receive the schema's dataclasses (sentinel.config.validate.typed_config); tests and library callers
may hand an OmegaConf node of the same schema. Hashes, JSON files and MLflow params need neither: `plain`
gives the same dicts, lists and enum values for both, so a cache key does not depend on the form.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def plain(value: Any) -> Any:
    """A dataclass, OmegaConf node, dict, list or Enum as dicts, lists and plain values (an Enum as its value)."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, Enum):
        return value.value
    return value
