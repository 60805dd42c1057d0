"""What a search shows on the console instead of Ray's tables: a line per trial epoch, and one per trial when it
ends.

An epoch's line says which trial of how many, the epoch of how many, the metric, the best so far and about
how long the search has left; a trial's last line says its sampled values, the metric it reached, after how
many epochs, and how it ended. Every epoch's results stay in the trial's result.json and the tracking store.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray.tune import Callback

from sentinel.runtime.eta import time_left
from sentinel.runtime.tracking.names import trial_number

log = logging.getLogger("sentinel.stages.tune.search")


class TrialProgress(Callback):
    """A Ray Tune callback (runs in the driver) that logs one line per finished, stopped or failed trial."""

    def __init__(self, metric: str, mode: str, epochs: int, trials: int) -> None:
        self.metric, self.mode, self.epochs, self.trials, self.done = metric, mode, epochs, trials, 0
        self.started = time.monotonic()
        self.epochs_done: dict[str, int] = {}  # per trial: epochs reported (an ended trial counts as all done)
        self.best: float | None = None

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any):
        epoch = int(result.get("training_iteration", 0))
        self.epochs_done[trial.trial_id] = epoch
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and (self.best is None or better(value, self.best, self.mode)):
            self.best = float(value)
        done = sum(self.epochs_done.values())
        left = time_left(done, self.trials * self.epochs, time.monotonic() - self.started)
        log.info(
            "tune: trial %d/%d, epoch %d/%d: %s %s (best so far %s); search: %s",
            trial_number(trial.trial_id, len(self.epochs_done)),
            self.trials,
            epoch,
            self.epochs,
            self.metric,
            _number(value),
            _number(self.best),
            left,
        )

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        epochs = int(result.get("training_iteration", 0))
        ended = "completed" if epochs >= self.epochs else "stopped by ASHA"
        self.done += 1
        self.epochs_done[trial.trial_id] = self.epochs  # what ASHA saved is no longer left to do
        log.info(
            "tune: trial %d/%d (%s: %s) %s after %d/%d epochs, %s %s (%d of %d trials done)",
            trial_number(trial.trial_id, self.done),
            self.trials,
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
        self.epochs_done[trial.trial_id] = self.epochs
        log.warning("tune: trial %s failed; its error is in %s", trial.trial_id, trial.path)


def better(value: float, best: float, mode: str) -> bool:
    return value < best if mode == "min" else value > best


def values(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_number(v)}" for k, v in config.items())


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
