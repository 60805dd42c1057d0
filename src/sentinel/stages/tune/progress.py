"""What a search shows on the console: one line per trial when it ends, instead of Ray's tables.

Each line says which trial, its sampled values, the metric it reached, after how many epochs, and how it
ended; per-epoch results stay in the trial's result.json and the run's tracking store.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune import Callback

log = logging.getLogger("sentinel.stages.tune.search")


class TrialProgress(Callback):
    """A Ray Tune callback (runs in the driver) that logs one line per finished, stopped or failed trial."""

    def __init__(self, metric: str, epochs: int, trials: int) -> None:
        self.metric, self.epochs, self.trials, self.done = metric, epochs, trials, 0

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        epochs = int(result.get("training_iteration", 0))
        ended = "completed" if epochs >= self.epochs else "stopped by ASHA"
        self.done += 1
        log.info(
            "tune: trial %s (%s) %s after %d/%d epochs, %s %s (%d of %d trials done)",
            trial.trial_id,
            values(trial.config),
            ended,
            epochs,
            self.epochs,
            self.metric,
            _number(result.get(self.metric)),
            self.done,
            self.trials,
        )

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.done += 1
        log.warning("tune: trial %s failed; its error is in %s", trial.trial_id, trial.path)


def values(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_number(v)}" for k, v in config.items())


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
