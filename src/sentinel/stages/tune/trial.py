"""The code that runs inside Ray workers: one trial, an Ultralytics training with the trial's values, reporting its
validation metrics every epoch to Ray Tune. Kept apart from the driver so a worker imports only what it runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sentinel.config.schema import SentinelConfig
from sentinel.runtime.applied import APPLIED_FILE, AppliedCheck
from sentinel.runtime.ultra import fixed_training_args, sentinel_trainer

log = logging.getLogger(__name__)


class EpochReporter:
    """Ultralytics callbacks that report each epoch to Ray Tune, and the weights after the last one."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_fit_epoch_end(self, trainer: Any) -> None:
        import ray
        from ray import tune

        metrics: dict[str, Any] = {k: float(v) for k, v in trainer.metrics.items()}
        metrics["epoch"] = trainer.epoch + 1
        metrics["node_id"] = ray.get_runtime_context().get_node_id()  # where it ran: trials per node on a cluster
        checkpoint = None
        if trainer.epoch + 1 >= self.epochs and Path(trainer.wdir, "best.pt").is_file():
            checkpoint = tune.Checkpoint.from_directory(str(trainer.wdir))
        tune.report(metrics, checkpoint=checkpoint)


class TrialLogHandler(logging.FileHandler):
    """The file handler of the trial this (possibly reused) Ray actor runs now."""


def log_ultralytics_to(path: Path) -> None:
    """Keep a trial's training log in its folder: the driver does not show workers' output.

    Ray reuses a trial's actor for the next trial (reuse_actors), so the previous trial's handler goes.
    """
    ultralytics_log = logging.getLogger("ultralytics")
    for old in [h for h in ultralytics_log.handlers if isinstance(h, TrialLogHandler)]:
        ultralytics_log.removeHandler(old)
        old.close()
    handler = TrialLogHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    ultralytics_log.addHandler(handler)


def train_trial(config: dict[str, Any], setup: dict[str, Any]) -> None:
    """One Ray Tune trial: train with Ultralytics using the fixed arguments overridden by `config`."""
    import torch
    from ray import tune
    from ultralytics import YOLO

    torch.set_num_threads(max(1, int(setup["cpu_per_trial"])))
    trial_dir = tune.get_context().get_trial_dir()
    log_ultralytics_to(Path(trial_dir, "trial.log"))
    reporter = EpochReporter(setup["epochs"])
    model = YOLO(setup["weights"])
    model.add_callback("on_fit_epoch_end", reporter.on_fit_epoch_end)
    asked = {**setup["fixed"], **config}
    AppliedCheck(asked, Path(trial_dir, APPLIED_FILE)).attach(model)  # the sample must be what it trains with
    model.train(
        trainer=sentinel_trainer(resumable=False),  # a failed trial starts over (FailureConfig)
        data=setup["data"],
        epochs=setup["epochs"],
        device=setup["device"],
        workers=setup["workers"],
        project=trial_dir,
        name="train",
        exist_ok=True,
        plots=False,
        verbose=False,
        **asked,
    )


def trial_close_mosaic(close_mosaic: int, finetune_epochs: int, trial_epochs: int) -> int:
    """The fine-tune's share of epochs without mosaic, in a trial's epochs; mosaic always acts in the first.

    Ultralytics counts close_mosaic in epochs and closes from the first when it is >= epochs, so the fine-tune's
    10 of 100 would switch mosaic and mixup off for the whole of a 10-epoch (or 3-epoch) trial, and a search
    over them would search nothing. Scaling keeps what the trial ranks close to the fine-tune it stands for:
    augmented epochs first, then a clean finish, in the same proportion (demo: 10 of 40 → 1 of 3).
    """
    if close_mosaic <= 0 or trial_epochs <= 1:
        return 0
    share = min(close_mosaic / max(finetune_epochs, 1), 1.0)
    return min(round(share * trial_epochs), trial_epochs - 1)


def trial_fixed_args(cfg: SentinelConfig) -> dict[str, Any]:
    """The fixed training arguments of a trial: the fine-tune's, with close_mosaic scaled to the trial."""
    args = fixed_training_args(cfg.augmentation, cfg.model, cfg.training, cfg.seed)
    args["close_mosaic"] = trial_close_mosaic(int(args["close_mosaic"]), cfg.model.epochs, cfg.tune.epochs)
    return args


def trial_setup(cfg: SentinelConfig, data_yaml: Path) -> dict[str, Any]:
    """What every trial needs, as plain values (it travels to Ray workers)."""
    return {
        "data": str(data_yaml),
        "weights": cfg.model.weights,
        "epochs": cfg.tune.epochs,
        "device": "0" if cfg.hardware.gpu_per_trial > 0 else "cpu",  # Ray sets CUDA_VISIBLE_DEVICES per trial
        "workers": cfg.hardware.workers,
        "cpu_per_trial": cfg.hardware.cpu_per_trial,
        "fixed": trial_fixed_args(cfg),
    }
