"""mode=finetune: train on the merged dataset with model/augmentation values and the chosen tuned ones.

The values actually used are written to finetune_args.yaml in the run folder (and Ultralytics saves its
own args.yaml), so the run is reproducible on its own. Ultralytics writes into <run>/finetune/; the final
weights are copied to <run>/<model.output_name>. `finetune.resume=true` continues the newest unfinished
fine-tune with the same inputs from its last.pt, in its own folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from sentinel.errors import SentinelError
from sentinel.fingerprint import stable_hash
from sentinel.prep import data_dir_of, prepare_dataset
from sentinel.runs import link_or_copy, lookup_result, newest_unfinished, record_result, resolve_result, write_state
from sentinel.tune import EpochReporter
from sentinel.ultra import (
    check_weights_available,
    fixed_training_args,
    load_yolo,
    provide_offline_font,
    ultralytics_device,
)

log = logging.getLogger(__name__)

LAST = "finetune/weights/last.pt"  # where Ultralytics keeps the checkpoint a killed run resumes from


@dataclass(frozen=True)
class FinetuneResult:
    weights: Path
    run_dir: Path
    hparams: dict[str, Any]
    skipped: bool = False
    resumed_from: Path | None = None


def choose_hparams(cfg: DictConfig, dataset: str, from_run: Path | None = None) -> tuple[dict[str, Any], str]:
    """Tuned values to use and where they came from: this run's tune (mode=all), finetune.hparams_from, or none."""
    if from_run is not None:
        path = from_run / "best_hparams.yaml"
        return yaml.safe_load(path.read_text()) or {}, str(path)
    wanted = cfg.finetune.hparams_from.strip()
    if not wanted:
        return {}, ""
    entry = resolve_result(
        wanted, "tune", "finetune.hparams_from", match={"dataset": dataset} if wanted == "latest" else None
    )
    path = Path(entry["best_hparams"])
    if not path.is_file():
        raise SentinelError(f"{path}: best_hparams.yaml of that tune run is missing")
    return yaml.safe_load(path.read_text()) or {}, str(path)


def training_args(cfg: DictConfig, hparams: dict[str, Any]) -> dict[str, Any]:
    """Ultralytics training arguments: augmentation and model values, overridden by the tuned ones."""
    return {**fixed_training_args(cfg), **hparams}


def finetune_key(cfg: DictConfig, dataset: str, args: dict[str, Any]) -> str:
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
    cfg: DictConfig, run_dir: Path, hparams_run: Path | None = None, skip_if_done: bool = False
) -> FinetuneResult:
    """Fine-tune and save the final weights in the run folder (or reuse a finished identical run)."""
    check_weights_available(cfg.model.weights)
    merged = prepare_dataset(cfg)
    hparams, source = choose_hparams(cfg, merged.fingerprint, hparams_run)
    args = training_args(cfg, hparams)
    key = finetune_key(cfg, merged.fingerprint, args)
    target = run_dir / cfg.model.output_name
    data_dir = data_dir_of(cfg)
    if skip_if_done and (done := lookup_result("finetune", key, data_dir, needed=("weights",))):
        link_or_copy(Path(done["weights"]), target)
        log.info("finetune: skipped, done in %s", done["run_dir"])
        return FinetuneResult(target, run_dir, hparams, skipped=True)
    (run_dir / "finetune_args.yaml").write_text(
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
        )
    )
    resume_from = newest_unfinished("finetune", key, exclude=run_dir, needs=LAST) if cfg.finetune.resume else None
    if cfg.finetune.resume and resume_from is None:
        log.info("finetune: nothing to resume for these inputs; starting fresh")
    write_state(run_dir, "finetune", key, "running")
    best = train(cfg, merged.dataset_yaml, args, run_dir, resume_from)
    link_or_copy(best, target)
    write_state(run_dir, "finetune", key, "done")
    if resume_from is not None:
        write_state(resume_from, "finetune", key, "done")
    record_result(
        "finetune",
        key,
        run_dir,
        data_dir,
        {"weights": str(target), "dataset": merged.fingerprint, "hparams_from": source},
    )
    log.info("finetune: weights saved to %s", target)
    return FinetuneResult(target, run_dir, hparams, resumed_from=resume_from)


def train(cfg: DictConfig, data_yaml: Path, args: dict[str, Any], run_dir: Path, resume_from: Path | None) -> Path:
    """Run Ultralytics training (or resume it) and return the best weights it saved."""
    provide_offline_font()
    if resume_from is not None:
        last = resume_from / LAST
        log.info("finetune: resuming %s", last)
        model = load_yolo(last)
        model.add_callback("on_pretrain_routine_start", EpochReporter.drop_builtin_raytune)
        model.train(resume=True)
    else:
        model = load_yolo(cfg.model.weights)
        model.add_callback("on_pretrain_routine_start", EpochReporter.drop_builtin_raytune)
        model.train(
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
