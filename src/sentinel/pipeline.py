"""Dispatch on `mode`: one plain function per stage, each taking the config and the run folder.

Stage modules are imported inside the functions that need them, so composing a config stays fast.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sentinel.errors import NotImplementedStage
from sentinel.schema import Mode
from sentinel.validate import validate

log = logging.getLogger(__name__)

# Stage order for mode=all.
PIPELINE = (Mode.prep, Mode.tune, Mode.finetune, Mode.export, Mode.evaluate)


def run_prep(cfg: DictConfig, run_dir: Path) -> Any:
    from sentinel.prep import prep

    return prep(cfg, run_dir)


def run_tune(cfg: DictConfig, run_dir: Path) -> Any:
    from sentinel.tune import tune

    return tune(cfg, run_dir)


def run_finetune(cfg: DictConfig, run_dir: Path) -> Any:
    raise NotImplementedStage("finetune", 6)


def run_export(cfg: DictConfig, run_dir: Path) -> Any:
    raise NotImplementedStage("export", 6)


def run_evaluate(cfg: DictConfig, run_dir: Path) -> Any:
    raise NotImplementedStage("evaluate", 6)


STAGES: dict[Mode, Callable[[DictConfig, Path], Any]] = {
    Mode.prep: run_prep,
    Mode.tune: run_tune,
    Mode.finetune: run_finetune,
    Mode.export: run_export,
    Mode.evaluate: run_evaluate,
}


def run_all(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run the stages in order, as far as they are built; say plainly which are not built yet."""
    results: dict[str, Any] = {}
    for mode in PIPELINE:
        try:
            results[mode.value] = STAGES[mode](cfg, run_dir)
        except NotImplementedStage as missing:
            remaining = [m.value for m in PIPELINE[PIPELINE.index(mode) :]]
            log.warning("mode=all stopped before %s: %s", ", ".join(remaining), missing)
            results["not_implemented"] = remaining
            break
    return results


def run_mode(cfg: DictConfig, run_dir: Path) -> Any:
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
    prep_result = results.get("prep")
    if prep_result is not None:
        lines.append(f"  dataset:     {prep_result.dataset_yaml}{' (cache hit)' if prep_result.cache_hit else ''}")
        lines.append(f"  prep report: {run_dir / 'prep_report.md'} (+ class_distribution.png, samples.png)")
    tune_result = results.get("tune")
    if tune_result is not None:
        lines.append(f"  best hparams: {run_dir / 'best_hparams.yaml'} ({tune_result.best_metric:.4f})")
        lines.append(f"  tune report:  {run_dir / 'tune_report.md'} (+ tune/results.csv, tune/*.png)")
    if results.get("not_implemented"):
        lines.append(f"  not implemented yet: {', '.join(results['not_implemented'])}")
    return "\n".join(lines)
