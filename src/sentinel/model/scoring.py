"""How a model is scored, the same way by evaluate, inspect and compare: Ultralytics' val() arguments, the
split chosen, and the metric names that say the split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sentinel.config.schema import HardwareConfig, ModelConfig
from sentinel.errors import ConfigError
from sentinel.runtime.ultra import ultralytics_device


def val_args(
    model: ModelConfig, hardware: HardwareConfig, dataset_yaml: Path, split: str, save_dir: Path, plots: bool
) -> dict[str, Any]:
    """Ultralytics' val() arguments: mode=inspect validates exactly as mode=evaluate does."""
    return {
        "data": str(dataset_yaml),
        "split": split,
        "imgsz": model.imgsz,
        "batch": model.batch,
        "device": ultralytics_device(hardware.device),
        "workers": hardware.workers,
        "project": str(save_dir.parent),
        "name": save_dir.name,
        "exist_ok": True,
        "plots": plots,
        "verbose": False,
    }


def tracked_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The means and the per-class table under names that say the split: `test/map50`, `test/gun/recall`."""
    split = metrics["split"]
    flat = {f"{split}/{name}": value for name, value in metrics["means"].items()}
    for row in metrics["classes"]:
        flat.update({f"{split}/{row['class']}/{k}": v for k, v in row.items() if k != "class"})
    return flat


def choose_split(dataset_yaml: Path, wanted: str) -> tuple[str, str]:
    """`test` falls back to val (and says so) when the dataset has none; any other name must exist."""
    data = yaml.safe_load(dataset_yaml.read_text())
    if wanted in data:
        return wanted, ""
    if wanted == "test":
        return "val", "the dataset has no test split; evaluated on val instead"
    raise ConfigError("evaluate.split", f"the dataset has no {wanted!r} split", "use test, val or train")
