"""Dispatch on `mode`: one plain function per stage, each taking the config, the run folder and what the
run shares — its dataset (built on first use) and its tracker. The only module that knows every stage.

The config arrives as Hydra composed it (a DictConfig) and is checked and recorded as such; the stages get it
once as the schema's dataclasses (sentinel.config.validate.typed_config), and hand on only the parts below them.

Stage modules are imported inside the functions that need them, so composing a config stays fast.
mode=all runs every stage in one run folder and skips a stage whose result already exists for the same
inputs (sentinel.runtime.runs keeps that index), so a rerun after a crash continues where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sentinel.config.schema import Mode, SentinelConfig
from sentinel.config.validate import typed_config, validate
from sentinel.dataset.merge import PrepFailed
from sentinel.dataset.prepare import RunDataset, data_dir_of
from sentinel.errors import Interrupted
from sentinel.runtime.redaction import redact
from sentinel.runtime.runs import (
    refuse_other_settings,
    run_finished,
    run_folder_owned,
    write_run_status,
    write_text_atomic,
)
from sentinel.runtime.tracking.client import (
    MAX_DESCRIPTION_CHARS,
    RERUN_RECORD,
    RUN_RECORD,
    Tracker,
    start_tracking,
)
from sentinel.runtime.tracking.store import STORE_FILE, local_store_dir

log = logging.getLogger(__name__)


def run_prep(cfg: SentinelConfig, run_dir: Path, dataset: RunDataset, tracker: Tracker) -> Any:
    from sentinel.dataset.prepare import prep

    return prep(cfg.merge, run_dir, dataset)


def run_tune(cfg: SentinelConfig, run_dir: Path, dataset: RunDataset, tracker: Tracker) -> Any:
    from sentinel.stages.tune.search import tune

    return tune(cfg, run_dir, dataset, tracker)


def run_finetune(cfg: SentinelConfig, run_dir: Path, dataset: RunDataset, tracker: Tracker) -> Any:
    from sentinel.stages.finetune import finetune

    return finetune(cfg, run_dir, dataset, tracker)


def run_export(cfg: SentinelConfig, run_dir: Path, dataset: RunDataset, tracker: Tracker) -> Any:
    from sentinel.stages.export import export

    return export(cfg, run_dir, dataset)


def run_evaluate(cfg: SentinelConfig, run_dir: Path, dataset: RunDataset, tracker: Tracker) -> Any:
    from sentinel.stages.evaluate import evaluate

    return evaluate(cfg, run_dir, dataset, tracker)


def run_inspect(cfg: SentinelConfig, run_dir: Path, dataset: RunDataset, tracker: Tracker) -> Any:
    from sentinel.stages.inspection import inspect

    return inspect(cfg, run_dir, dataset, tracker)


def run_doctor(cfg: SentinelConfig, run_dir: Path, dataset: RunDataset, tracker: Tracker) -> Any:
    from sentinel.stages.doctor import doctor

    return doctor(cfg, run_dir)


def run_compare(cfg: SentinelConfig, run_dir: Path, dataset: RunDataset, tracker: Tracker) -> Any:
    from sentinel.stages.compare import compare

    return compare(cfg, run_dir, launch_dir())


def run_predict(cfg: SentinelConfig, run_dir: Path, dataset: RunDataset, tracker: Tracker) -> Any:
    from sentinel.stages.predict.run import predict

    return predict(cfg, run_dir, dataset, tracker, launch_dir())


STAGES: dict[Mode, Callable[[SentinelConfig, Path, RunDataset, Tracker], Any]] = {
    Mode.doctor: run_doctor,
    Mode.prep: run_prep,
    Mode.tune: run_tune,
    Mode.finetune: run_finetune,
    Mode.export: run_export,
    Mode.evaluate: run_evaluate,
    Mode.compare: run_compare,
    Mode.inspect: run_inspect,
    Mode.predict: run_predict,
}


def run_all(cfg: SentinelConfig, run_dir: Path, dataset: RunDataset, tracker: Tracker) -> dict[str, Any]:
    """prep → tune → finetune (with this run's best values) → export → evaluate, skipping finished stages."""
    from sentinel.model.card import copy_model_card, read_training, write_model_card
    from sentinel.stages.evaluate import evaluate
    from sentinel.stages.export import export
    from sentinel.stages.finetune import finetune
    from sentinel.stages.tune.search import tune

    results: dict[str, Any] = {"prep": run_prep(cfg, run_dir, dataset, tracker)}
    results["tune"] = tune(cfg, run_dir, dataset, tracker, skip_if_done=True)
    results["finetune"] = finetune(cfg, run_dir, dataset, tracker, hparams_run=run_dir, skip_if_done=True)
    weights = results["finetune"].weights
    results["export"] = export(cfg, run_dir, dataset, weights=weights, skip_if_done=True)
    results["evaluate"] = evaluate(cfg, run_dir, dataset, tracker, weights=weights, skip_if_done=True)
    card = read_training(results["finetune"].args_file) if results["finetune"].args_file else {}
    write_model_card(cfg, dataset, weights.parent, weights, card, results["evaluate"].metrics)  # now with its scores
    copy_model_card(weights.parent, run_dir / "export")
    return results


def run_mode(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Validate the config, take the run folder (one live run; a finished one keeps its settings), save the
    config resolved in it, and run the selected mode."""
    validate(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_folder_owned(run_dir):
        refuse_other_settings(run_dir, OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
        return run_in_folder(cfg, run_dir)


def run_in_folder(composed: DictConfig, run_dir: Path) -> dict[str, Any]:
    # A rerun in a folder whose run finished (same settings: refuse_other_settings) may only add to it: if it
    # fails, the folder still says what the finished run did.
    kept = run_finished(run_dir)
    write_text_atomic(run_dir / "config_resolved.yaml", redact(OmegaConf.to_yaml(composed, resolve=True)))
    cfg = typed_config(composed)
    mode = Mode(cfg.mode)
    log.info("mode=%s, run folder %s", mode.value, run_dir)
    tracker = open_tracking(cfg, run_dir, mode, RERUN_RECORD if kept else RUN_RECORD)
    if not kept:
        write_run_status(run_dir, mode.value, "RUNNING")
    try:
        dataset = RunDataset(cfg.datasets, cfg.merge, data_dir_of(cfg), tracker)
        stage = run_all if mode is Mode.all else STAGES[mode]
        results = stage(cfg, run_dir, dataset, tracker)
        results = results if mode is Mode.all else {mode.value: results}
    except PrepFailed as failed:  # what was skipped, and why, is worth most when nothing was left
        from sentinel.dataset.report import write_report

        if not kept:
            write_report(failed.report, run_dir, [], failed.report["classes"]["names"], 0)
        end_tracking(tracker, run_dir, mode, "FAILED", kept)
        raise PrepFailed(f"{failed} (report: {run_dir / 'prep_report.md'})", failed.report) from None
    except (KeyboardInterrupt, Interrupted):
        end_tracking(tracker, run_dir, mode, "KILLED", kept)
        raise
    except BaseException:
        end_tracking(tracker, run_dir, mode, "FAILED", kept)
        raise
    record_results(cfg, tracker, run_dir, results, dataset)
    write_run_status(run_dir, mode.value, "FINISHED")
    tracker.end("FINISHED")  # a rerun's record (RERUN_RECORD) becomes the folder's once its run is recorded
    print(summary(run_dir, results, cfg.tune.metric))
    if tracker.run_id:
        print(f"  {'tracking:':<10}MLflow run {tracker.run_id} ({tracking_hint(cfg)})")
    elif tracker.detached:
        record = run_dir / RUN_RECORD
        print(f"  {'tracking:':<10}recording the MLflow run now ({record} names it; {tracking_hint(cfg)})")
    if tracker.incomplete:
        print(f"  {'':<10}not fully tracked: {tracker.incomplete}")
    return results


# Modes that check or read and train nothing: their reports are in their run folders, and as MLflow runs they
# would sit among the training runs.
UNTRACKED_MODES = (Mode.doctor, Mode.compare)


def open_tracking(cfg: SentinelConfig, run_dir: Path, mode: Mode, record: str) -> Tracker:
    """This run's tracker (none for UNTRACKED_MODES: mode=doctor checks the tracking server itself). An
    unreachable server fails here, before any work."""
    if mode in UNTRACKED_MODES:
        return Tracker()
    return start_tracking(cfg, run_dir, launch_dir(), record)


def end_tracking(tracker: Tracker, run_dir: Path, mode: Mode, status: str, kept: bool) -> None:
    """A run that did not finish: what its folder holds (reports, logs) still goes to the tracker; the folder's
    status says so unless it holds a finished run (`kept`)."""
    if not kept:
        write_run_status(run_dir, mode.value, status)
    tracker.log_run_folder(run_dir)
    tracker.end(status)


def launch_dir() -> Path:
    """Where train.py was launched: relative paths (data_dir, outputs/) are relative to it."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.cwd) if HydraConfig.initialized() else Path.cwd()


def record_results(
    cfg: SentinelConfig, tracker: Tracker, run_dir: Path, results: dict[str, Any], dataset: RunDataset
) -> None:
    """The run folder as artefacts, the test table as the run's description (what MLflow's run page shows
    first), and fine-tuned weights as a new registered model version, described by its model card."""
    finetuned = results.get("finetune")
    register = finetuned is not None and not finetuned.skipped and cfg.tracking.register_model and tracker.active
    if register:
        register = build_pyfunc_model(finetuned.weights, run_dir)
    tracker.log_run_folder(run_dir)
    if "evaluate" in results and (run_dir / "metrics.md").is_file():
        tracker.set_tags({"mlflow.note.content": (run_dir / "metrics.md").read_text()[:MAX_DESCRIPTION_CHARS]})
    if not register:
        return  # weights reused from an earlier run were registered by that run
    tags: dict[str, Any] = {"dataset": dataset.merged().fingerprint, "hparams_from": finetuned.hparams_from}
    if "evaluate" in results:
        tags.update({f"test.{k}": round(v, 4) for k, v in results["evaluate"].metrics["means"].items()})
    from sentinel.model.card import CARD

    card = finetuned.weights.parent / f"{CARD}.md"
    description = card.read_text() if card.is_file() else ""
    tags["sentinel.weights_file"] = finetuned.weights.name
    tracker.register_model(Path(cfg.model.output_name).stem, MODEL_ARTIFACTS, tags, description)


# The run folder's MLflow model (and the artefact folder a registered version points at): the weights and their
# card with the code that serves them, so `mlflow.pyfunc.load_model("models:/sentinel/latest")` and
# `mlflow models serve` work (sentinel.model.serving).
MODEL_ARTIFACTS = "model"


def build_pyfunc_model(weights: Path, run_dir: Path) -> bool:
    """The MLflow model folder, or a warning and False: a run whose work is done does not fail on tracking."""
    from sentinel.model.card import CARD
    from sentinel.model.serving import save_pyfunc_model

    try:
        save_pyfunc_model(weights, weights.parent / f"{CARD}.json", run_dir / MODEL_ARTIFACTS)
    except Exception as error:  # MLflow's own errors are of several types
        log.warning("tracking: the weights are not registered: building their MLflow model failed: %s", error)
        return False
    return True


def tracking_hint(cfg: SentinelConfig) -> str:
    if cfg.tracking.uri.strip():
        return f"open {cfg.tracking.uri}"
    store = local_store_dir(launch_dir(), cfg.paths.tracking) / STORE_FILE
    return f"see it with: mlflow ui --backend-store-uri sqlite:///{store}"


def summary(run_dir: Path, results: dict[str, Any], tune_metric: str) -> str:
    """What a person wants at the end of a run: where everything is, and the scores by their names (the
    search's best is a loss in the demo preset, where a bare 1.64 would read as an mAP over 1)."""
    lines = [f"Sentinel run folder: {run_dir}"]

    def add(stage: str, text: str) -> None:
        skipped = getattr(results[stage], "skipped", False) or getattr(results[stage], "cache_hit", False)
        lines.append(f"  {stage + ':':<10}{text}{'  (already done: reused)' if skipped else ''}")

    if "prep" in results:
        add("prep", f"{results['prep'].dataset_yaml}; report {run_dir / 'prep_report.md'}")
    if "tune" in results:
        best = f"best {tune_metric} {results['tune'].best_metric:.4f}"
        add("tune", f"{run_dir / 'best_hparams.yaml'} ({best}); {run_dir / 'tune_report.md'}")
    if "finetune" in results:
        add("finetune", f"weights {results['finetune'].weights}")
    if "export" in results:
        add("export", ", ".join(str(p) for p in results["export"].files.values()))
    if "evaluate" in results:
        means = results["evaluate"].metrics["means"]
        add("evaluate", f"mAP50-95 {means['map50-95']:.4f}, mAP50 {means['map50']:.4f}; {run_dir / 'metrics.md'}")
    if "inspect" in results:
        missed = sum(row["false_negatives"] for row in results["inspect"]["classes"])
        alarms = sum(row["false_positives"] for row in results["inspect"]["classes"])
        add("inspect", f"{missed} boxes missed, {alarms} false alarms; {run_dir / 'errors.md'}")
        lines.append(f"{'':<12}{run_dir / 'missed.png'}, {run_dir / 'false_alarms.png'}")
    if "predict" in results:
        done = results["predict"]
        found = ", ".join(f"{n} {name}" for name, n in sorted(done.detections.items())) or "nothing"
        add("predict", f"{done.frames} {done.unit} at {done.fps:.1f}/s: {found}; {done.alerts} alerts; {done.report}")
        if done.annotated:
            lines.append(f"{'':<12}annotated: {', '.join(str(p) for p in done.annotated)}")
    if "compare" in results:
        compared = results["compare"]
        add("compare", f"{len(compared.runs)} runs, {len(compared.differing)} config keys differ (see the report)")
        lines.append(f"{'':<12}{compared.report}, {run_dir / 'compare.html'}, {run_dir / 'compare.png'}")
    return "\n".join(lines)
