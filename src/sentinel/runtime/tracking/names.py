"""Names MLflow sees: metric, model, run and experiment names, params flattened, and the tags that say where a run
came from (mode, sources, git, sweep)."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from sentinel.config.plain import plain
from sentinel.config.schema import SentinelConfig
from sentinel.runtime.redaction import redact

log = logging.getLogger(__name__)


MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def metric_name(name: str) -> str:
    """A name MLflow accepts for a metric, param or tag, made in this one place.

    MLflow takes only letters, digits, `_ - . / :` and spaces, and no name that a path would normalise to
    another (mlflow/utils/validation.py). Parentheses are dropped as Ultralytics' own MLflow logger does
    (`metrics/mAP50-95(B)` → `metrics/mAP50-95B`); any other refused character (a class named `o'clock` or
    `c++`) becomes `_`, and a path-like piece (`..`) is spelled out. What was renamed is kept as a tag.
    """
    safe = _REFUSED_IN_NAMES.sub("_", name.replace("(", "").replace(")", ""))
    parts = [part if part not in ("", ".", "..") else part.replace(".", "_") or "_" for part in safe.split("/")]
    return "/".join(parts)


_REFUSED_IN_NAMES = re.compile(r"[^/\w.\- :]")


def model_name(name: str) -> str:
    """A registered model's name MLflow accepts: no `/` or `:` (`det:v2` → `det_v2`)."""
    return name.replace("/", "_").replace(":", "_").strip() or "sentinel"


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """A config in plain values (sentinel.config.plain: `all`, not `Mode.all`) as Hydra's dotted keys
    (`model.imgsz`), each value a string MLflow accepts."""
    if isinstance(data, Mapping) and data:
        flat: dict[str, str] = {}
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    text = json.dumps(data) if isinstance(data, (list, dict)) else str(data)
    return {prefix.rstrip("."): redact(text)[:MAX_PARAM_CHARS]}


def experiment_name(cfg: SentinelConfig) -> str:
    """`tracking.experiment`, else the `experiment` preset's name, else `sentinel`."""
    if cfg.tracking.experiment.strip():
        return cfg.tracking.experiment.strip()
    return hydra_choice("experiment") or "sentinel"


def run_name(cfg: SentinelConfig) -> str:
    """`finetune · demo · 01:47:02` (and `· job 3` in a sweep): mode, preset and time of day, short enough that
    MLflow's runs list shows it whole (the date is its own column there)."""
    job = sweep_tags().get("sentinel.job_num", "")
    parts = [str(plain(cfg.mode)), hydra_choice("experiment"), time.strftime("%H:%M:%S"), f"job {job}" if job else ""]
    return " · ".join(part for part in parts if part)


def trial_run_name(number: int, values: Mapping[str, Any], shown: int = 3) -> str:
    """`trial 3 · lr0=0.0123 mosaic=1`: the trial's number in the search and its first sampled values."""
    sampled = " ".join(f"{key}={short_value(value)}" for key, value in list(values.items())[:shown])
    more = " …" if len(values) > shown else ""
    return f"trial {number} · {sampled}{more}".rstrip(" ·")


TRIAL_INDEX = re.compile(r"(?:^|_)[0-9a-f]{5}_(\d{5})(?:_|$)")  # Ray's `<experiment>_<index>` in ids and folders


def trial_number(trial: str, fallback: int) -> int:
    """A trial's number in its search, counted from 1, from Ray's trial id (`8b553_00003` → 4) or its folder's
    name (`train_trial_8b553_00003_3_lr0=…`)."""
    match = TRIAL_INDEX.search(trial)
    return int(match.group(1)) + 1 if match else fallback


def short_value(value: Any) -> str:
    number = as_float(value)
    if number is None or isinstance(value, bool):
        return str(value)
    return str(int(number)) if number.is_integer() else f"{number:.3g}"


def run_tags(cfg: SentinelConfig, run_dir: Path, launch_dir: Path) -> dict[str, Any]:
    """Mode, where the run lives, where its data came from, what code and libraries made it."""
    tags: dict[str, Any] = {
        "sentinel.mode": plain(cfg.mode),
        "sentinel.preset": hydra_choice("experiment"),  # "" without one: what compare names runs' presets by
        "sentinel.run_dir": str(run_dir),
        "sentinel.host": socket.gethostname(),
        "sentinel.pid": os.getpid(),
        "sentinel.device": cfg.hardware.device,
        "mlflow.source.name": "train.py",
        **{f"sentinel.version.{d}": distribution_version(d) for d in ("sentinel", "ultralytics", "torch", "mlflow")},
        **source_tags(cfg),
        **git_tags(launch_dir),
        **sweep_tags(),
    }
    return tags


def source_tags(cfg: SentinelConfig) -> dict[str, str]:
    """Every source with what pins its version (the content fingerprint is the dataset tag, set by prep)."""
    from sentinel.config.schema import source_pins

    return {f"sentinel.source.{name}": f"{s.type} {json.dumps(source_pins(s))}" for name, s in cfg.datasets.items()}


def git_tags(folder: Path) -> dict[str, str]:
    """Commit and dirty flag of the launch folder when it is a git repository (MLflow's own tag names)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return {}
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {"mlflow.source.git.commit": commit.stdout.strip(), "sentinel.git.dirty": str(bool(status.stdout.strip()))}


def sweep_tags() -> dict[str, str]:
    """In a multirun, the sweep folder and job number: every job is a run of the same experiment."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return {}
    hydra_cfg = HydraConfig.get()
    return {"sentinel.sweep_dir": str(Path(hydra_cfg.sweep.dir).resolve()), "sentinel.job_num": str(hydra_cfg.job.num)}


def hydra_choice(group: str) -> str:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    return str(HydraConfig.get().runtime.choices.get(group) or "")


def prep_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """Prep's counts: totals, images and boxes per class and split, skips by reason, duplicates and leaks."""
    metrics: dict[str, float] = {f"prep/{k}": v for k, v in report.get("totals", {}).items()}
    for what in ("boxes", "images_per_class"):
        for per_split in report.get(what, {}).values():
            for split, per_class in per_split.items():
                for name, count in per_class.items():
                    key = f"prep/{what}/{split}/{name}"
                    metrics[key] = metrics.get(key, 0) + count
    for what in ("skipped_images", "skipped_label_lines"):
        for per_split in report.get(what, {}).values():
            for by_reason in per_split.values():
                for reason, count in by_reason.items():
                    key = f"prep/{what}/{reason}"
                    metrics[key] = metrics.get(key, 0) + count
    for key, value in report.get("duplicates", {}).items():
        if is_number(value):
            metrics[f"prep/duplicates/{key}"] = value
    return metrics


def distribution_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def as_float(value: Any) -> float | None:
    """A metric value as a float (numpy and torch scalars too), or None for text, flags and NaN."""
    if isinstance(value, (bool, str)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None


def is_number(value: Any) -> bool:
    return as_float(value) is not None
