"""mode=finetune: train on the merged dataset with model/augmentation values and the chosen tuned ones.

The values asked for are written to finetune_args.yaml in the run folder (and Ultralytics saves its own
args.yaml), so the run is reproducible on its own; what Ultralytics really applies (read back from its
optimizer, schedule, loss and dataset at the first batch: sentinel.runtime.applied) to applied_args.yaml, and a
difference fails the fine-tune there. Ultralytics writes into <run>/finetune/; the final
weights are copied to <run>/<model.output_name>. `finetune.resume=true` continues the newest unfinished
fine-tune with the same inputs from its last.pt, in its own folder.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sentinel.config.schema import SentinelConfig
from sentinel.config.validate import REPLACED_BY_AUTO
from sentinel.dataset.prepare import RunDataset, data_dir_of
from sentinel.errors import ConfigError, SentinelError
from sentinel.model.card import copy_model_card, read_training, write_model_card
from sentinel.runtime.applied import APPLIED_FILE, AppliedCheck, read_applied_file
from sentinel.runtime.eta import time_left
from sentinel.runtime.fingerprint import stable_hash
from sentinel.runtime.runs import (
    claim_run_folder,
    copy_file_atomic,
    link_or_copy,
    lookup_result,
    newest_unfinished,
    record_result,
    resolve_result,
    write_state,
    write_text_atomic,
)
from sentinel.runtime.tracking.client import Tracker, link_resumed_run
from sentinel.runtime.ultra import (
    check_device,
    check_weights_available,
    fixed_training_args,
    load_yolo,
    provide_offline_font,
    sentinel_trainer,
    ultralytics_device,
)

log = logging.getLogger(__name__)

CONSOLE_METRICS = ("train/box_loss", "val/box_loss", "metrics/mAP50(B)", "metrics/mAP50-95(B)")  # one line per epoch
LAST = "finetune/weights/last.pt"  # where Ultralytics keeps the checkpoint a killed run resumes from
ARGS_FILE = "finetune_args.yaml"  # exactly what a fine-tune used (the model card reads it)


@dataclass(frozen=True)
class FinetuneResult:
    weights: Path
    run_dir: Path
    hparams: dict[str, Any]
    skipped: bool = False
    resumed_from: Path | None = None
    hparams_from: str = ""
    args_file: Path | None = None  # finetune_args.yaml of the run that trained the weights


def choose_hparams(cfg: SentinelConfig, dataset: str, from_run: Path | None = None) -> tuple[dict[str, Any], str]:
    """Tuned values to use and where they came from: this run's tune (mode=all), finetune.hparams_from, or none."""
    if from_run is not None:
        path = from_run / "best_hparams.yaml"
        return read_hparams(path), str(path)
    wanted = cfg.finetune.hparams_from.strip()
    if not wanted:
        return {}, ""
    entry = resolve_result(wanted, "tune", "finetune.hparams_from", data_dir_of(cfg), match={"dataset": dataset})
    path = Path(entry["best_hparams"])
    if not path.is_file():
        raise SentinelError(f"{path}: best_hparams.yaml of that tune run is missing")
    return read_hparams(path), str(path)


def check_hparams_folder(cfg: SentinelConfig) -> None:
    """A run folder in finetune.hparams_from needs no dataset: when it holds no tune run, say so before prep
    (which downloads the sources the first time). `latest` is looked up on the prepared dataset later."""
    wanted = cfg.finetune.hparams_from.strip()
    if wanted and wanted != "latest":
        resolve_result(wanted, "tune", "finetune.hparams_from", data_dir_of(cfg))


def read_hparams(path: Path) -> dict[str, Any]:
    """best_hparams.yaml of a tune run: a mapping of training arguments, or a clear error naming the file."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise SentinelError(f"{path}: cannot read it ({type(error).__name__}). Fix: run mode=tune again") from None
    if not isinstance(data, dict) or not data:
        raise SentinelError(f"{path}: empty or not a mapping of training arguments. Fix: run mode=tune again")
    return data


def training_args(cfg: SentinelConfig, hparams: dict[str, Any]) -> dict[str, Any]:
    """Ultralytics training arguments: augmentation and model values, overridden by the tuned ones."""
    return {**fixed_training_args(cfg.augmentation, cfg.model, cfg.training, cfg.seed), **hparams}


def check_auto_optimizer(args: dict[str, Any], source: str) -> None:
    """optimizer=auto would replace the tuned lr0, momentum and warmup_bias_lr with its own (runtime.applied)."""
    if str(args.get("optimizer", "")).lower() != "auto":
        return
    replaced = [key for key in REPLACED_BY_AUTO if key in args]
    if replaced:
        raise ConfigError(
            "training.optimizer",
            f"auto ignores the tuned {', '.join(replaced)} from {source or 'the fine-tune values'}",
            "use the optimizer the tune run searched with (training.optimizer=SGD by default)",
        )


def finetune_key(cfg: SentinelConfig, dataset: str, args: dict[str, Any]) -> str:
    return stable_hash(
        {
            "dataset": dataset,
            "weights": cfg.model.weights,
            "epochs": cfg.model.epochs,
            "args": args,
            "device": str(cfg.hardware.device),
        }
    )


def finetune(
    cfg: SentinelConfig,
    run_dir: Path,
    dataset: RunDataset,
    tracker: Tracker,
    hparams_run: Path | None = None,
    skip_if_done: bool = False,
) -> FinetuneResult:
    """Fine-tune and save the final weights in the run folder (or reuse a finished identical run)."""
    check_weights_available(cfg.model.weights)
    check_device(cfg.hardware.device)
    if hparams_run is None:
        check_hparams_folder(cfg)
    merged = dataset.merged()
    hparams, source = choose_hparams(cfg, merged.fingerprint, hparams_run)
    args = training_args(cfg, hparams)
    check_auto_optimizer(args, source)
    key = finetune_key(cfg, merged.fingerprint, args)
    target = run_dir / cfg.model.output_name
    data_dir = data_dir_of(cfg)
    if skip_if_done and (done := lookup_result("finetune", key, data_dir, needed=("weights",))):
        link_or_copy(Path(done["weights"]), target)  # a no-op when it is this run folder's own file
        copy_model_card(Path(done["weights"]).parent, target.parent)
        log.info("finetune: skipped, done in %s", done["run_dir"])
        earlier_args = Path(done["run_dir"]) / ARGS_FILE
        return FinetuneResult(target, run_dir, hparams, skipped=True, args_file=earlier_args)
    claim_run_folder(run_dir, "finetune", key)
    write_text_atomic(
        run_dir / ARGS_FILE,
        yaml.safe_dump(
            {
                "hparams_from": source,
                "weights": cfg.model.weights,
                "data": str(merged.dataset_yaml),
                "epochs": cfg.model.epochs,
                "device": str(cfg.hardware.device),
                "args": args,
            },
            sort_keys=False,
        ),
    )
    resume_from = (
        newest_unfinished("finetune", key, data_dir, exclude=run_dir, needs=LAST) if cfg.finetune.resume else None
    )
    if cfg.finetune.resume and resume_from is None:
        log.info("finetune: nothing to resume for these inputs; starting fresh")
    write_state(run_dir, "finetune", key, "running", data_dir)
    tracker.set_tags({"sentinel.hparams_from": source})
    if resume_from is not None:
        link_resumed_run(tracker, "finetune", resume_from)
    best = train(cfg, merged.dataset_yaml, args, run_dir, resume_from, tracker)
    applied = read_applied_file(run_dir / APPLIED_FILE)
    tracker.log_params({f"applied.{key}": value for key, value in applied.items()})
    copy_file_atomic(best, target)
    write_model_card(cfg, dataset, target.parent, target, read_training(run_dir / ARGS_FILE))
    write_state(run_dir, "finetune", key, "done", data_dir)
    if resume_from is not None:
        write_state(resume_from, "finetune", key, "done", data_dir, continued_in=str(run_dir))
    record_result(
        "finetune",
        key,
        run_dir,
        data_dir,
        {"weights": str(target), "dataset": merged.fingerprint, "hparams_from": source},
    )
    log.info("finetune: weights saved to %s", target)
    return FinetuneResult(
        target, run_dir, hparams, resumed_from=resume_from, hparams_from=source, args_file=run_dir / ARGS_FILE
    )


def train(
    cfg: SentinelConfig,
    data_yaml: Path,
    args: dict[str, Any],
    run_dir: Path,
    resume_from: Path | None,
    tracker: Tracker,
) -> Path:
    """Run Ultralytics training (or resume it) and return the best weights it saved."""
    provide_offline_font()
    if resume_from is not None:
        last = resume_from / LAST
        log.info("finetune: resuming %s", last)
        model = with_sentinel_callbacks(load_yolo(last), tracker)
        model.train(resume=True, trainer=sentinel_trainer())
    else:
        model = with_sentinel_callbacks(load_yolo(cfg.model.weights), tracker)
        AppliedCheck(args, run_dir / APPLIED_FILE).attach(model)  # fails on the first batch if a value is not used
        model.train(
            trainer=sentinel_trainer(),
            data=str(data_yaml),
            epochs=cfg.model.epochs,
            device=ultralytics_device(cfg.hardware.device),
            workers=cfg.hardware.workers,
            project=str(run_dir),
            name="finetune",
            exist_ok=True,
            **args,
        )
    weights = Path(model.trainer.save_dir) / "weights"
    best = weights / "best.pt" if (weights / "best.pt").is_file() else weights / "last.pt"
    if not best.is_file():
        raise SentinelError(f"finetune: Ultralytics saved no weights in {weights}")
    return best


def with_sentinel_callbacks(model: Any, tracker: Tracker) -> Any:
    """Sentinel's per-epoch logging in (Ultralytics' own trackers stay out: sentinel.runtime.ultra.sentinel_trainer)."""
    EpochLogger(tracker).attach(model)
    return model


class EpochLogger:
    """Ultralytics callbacks: each epoch's losses, learning rates and validation metrics to the run's tracker.

    Ultralytics also fires on_fit_epoch_end once after training, for its final validation of best.pt
    (trainer.final_eval, at step epochs+1); those are logged as `best/...`, not as one more epoch.
    """

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.trained = False
        self.started, self.first_epoch = time.monotonic(), 0

    def on_train_start(self, trainer: Any) -> None:
        self.started, self.first_epoch = time.monotonic(), int(trainer.start_epoch)  # a resume starts later

    def on_train_epoch_end(self, trainer: Any) -> None:
        self.trained = True

    def on_fit_epoch_end(self, trainer: Any) -> None:
        if not self.trained:
            self.tracker.log_metrics({f"best/{k}": v for k, v in trainer.metrics.items()})
            return
        self.trained = False
        losses = trainer.label_loss_items(trainer.tloss, prefix="train")
        metrics = {**losses, **trainer.lr, **trainer.metrics}
        self.tracker.log_metrics(metrics, step=trainer.epoch + 1)
        shown = ", ".join(f"{k} {float(metrics[k]):.4f}" for k in CONSOLE_METRICS if k in metrics)
        done, total = trainer.epoch + 1 - self.first_epoch, trainer.epochs - self.first_epoch
        left = time_left(done, total, time.monotonic() - self.started)
        log.info("finetune: epoch %d/%d: %s; %s", trainer.epoch + 1, trainer.epochs, shown, left)

    def attach(self, model: Any) -> None:
        model.add_callback("on_train_start", self.on_train_start)
        model.add_callback("on_train_epoch_end", self.on_train_epoch_end)
        model.add_callback("on_fit_epoch_end", self.on_fit_epoch_end)
