"""What a search hands the fine-tune: its folder, the best trial's values and metric (the driver and the
report both make one, so it lives apart from both)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TuneResult:
    run_dir: Path
    best_hparams: dict[str, Any]
    best_metric: float
    trials: int
    resumed_from: Path | None
    skipped: bool = False
