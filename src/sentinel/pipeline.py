"""Dispatch on `mode`: one plain function per stage, each taking the config and the run folder.

Stage modules are imported inside the functions that need them, so composing a config stays fast.
mode=all runs every stage in one run folder and skips a stage whose result already exists for the same
inputs (sentinel.runs keeps that index), so a rerun after a crash continues where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sentinel.schema import Mode
from sentinel.validate import validate

log = logging.getLogger(__name__)


def run_prep(cfg: DictConfig, run_dir: Path) -> Any:
    from sentinel.prep import prep

    return prep(cfg, run_dir)


def run_tune(cfg: DictConfig, run_dir: Path) -> Any:
    from sentinel.tune import tune

    return tune(cfg, run_dir)


def run_finetune(cfg: DictConfig, run_dir: Path) -> Any:
    from sentinel.finetune import finetune

    return finetune(cfg, run_dir)


def run_export(cfg: DictConfig, run_dir: Path) -> Any:
    from sentinel.export import export

    return export(cfg, run_dir)


def run_evaluate(cfg: DictConfig, run_dir: Path) -> Any:
    from sentinel.evaluate import evaluate

    return evaluate(cfg, run_dir)


def run_doctor(cfg: DictConfig, run_dir: Path) -> Any:
    from sentinel.doctor import doctor

    return doctor(cfg, run_dir)


STAGES: dict[Mode, Callable[[DictConfig, Path], Any]] = {
    Mode.doctor: run_doctor,
    Mode.prep: run_prep,
    Mode.tune: run_tune,
    Mode.finetune: run_finetune,
    Mode.export: run_export,
    Mode.evaluate: run_evaluate,
}


def run_all(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """prep → tune → finetune (with this run's best values) → export → evaluate, skipping finished stages."""
    from sentinel.evaluate import evaluate
    from sentinel.export import export
    from sentinel.finetune import finetune
    from sentinel.tune import tune

    results: dict[str, Any] = {"prep": run_prep(cfg, run_dir)}
    results["tune"] = tune(cfg, run_dir, skip_if_done=True)
    results["finetune"] = finetune(cfg, run_dir, hparams_run=run_dir, skip_if_done=True)
    weights = results["finetune"].weights
    results["export"] = export(cfg, run_dir, weights=weights, skip_if_done=True)
    results["evaluate"] = evaluate(cfg, run_dir, weights=weights, skip_if_done=True)
    return results


def run_mode(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Validate the config, save it resolved in the run folder, and run the selected mode."""
    validate(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    mode = Mode(cfg.mode)
    log.info("mode=%s, run folder %s", mode.value, run_dir)
    results = run_all(cfg, run_dir) if mode is Mode.all else {mode.value: STAGES[mode](cfg, run_dir)}
    print(summary(run_dir, results))
    return results


def summary(run_dir: Path, results: dict[str, Any]) -> str:
    """What a person wants at the end of a run: where everything is."""
    lines = [f"Sentinel run folder: {run_dir}"]

    def add(stage: str, text: str) -> None:
        skipped = getattr(results[stage], "skipped", False) or getattr(results[stage], "cache_hit", False)
        lines.append(f"  {stage + ':':<10}{text}{'  (already done: reused)' if skipped else ''}")

    if "prep" in results:
        add("prep", f"{results['prep'].dataset_yaml}; report {run_dir / 'prep_report.md'}")
    if "tune" in results:
        add(
            "tune",
            f"{run_dir / 'best_hparams.yaml'} (best {results['tune'].best_metric:.4f}); {run_dir / 'tune_report.md'}",
        )
    if "finetune" in results:
        add("finetune", f"weights {results['finetune'].weights}")
    if "export" in results:
        add("export", ", ".join(str(p) for p in results["export"].files.values()))
    if "evaluate" in results:
        means = results["evaluate"].metrics["means"]
        add("evaluate", f"mAP50-95 {means['map50-95']:.4f}, mAP50 {means['map50']:.4f}; {run_dir / 'metrics.md'}")
    return "\n".join(lines)
