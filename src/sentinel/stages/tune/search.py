"""mode=tune: search `search_space` with Ray Tune's own API, training each trial with Ultralytics.

Why not `model.tune(use_ray=True)`: Ultralytics' run_ray_tune reserves NUM_THREADS = min(8, max(1, cpus - 1))
CPUs per trial, counted on the machine that starts the search (ultralytics 8.4.190, ultralytics/utils/__init__.py):
a 16-core node runs two trials at once, whatever the trials need, and on a cluster every trial asks for the
driver's count, not its node's; it takes no cluster address, shuts Ray down and records no best values. Here:
- resources per trial come from `hardware` (cpu_per_trial, gpu_per_trial; fractions pack trials on a GPU,
  and Ray assigns the devices), and `max_concurrent_trials` trials run at once;
- Ray runs locally (sized by hardware.num_cpus/num_gpus) or joins `hardware.ray_address`; before the
  first trial the address must answer as Ray, a trial must fit on some node and `tune.metric` must be a
  metric Ultralytics reports (sentinel.runtime.raycluster), so a bad setting fails at once instead of hanging;
- each trial reports its validation metrics every epoch with a fresh `tune.report` (that drives ASHA), and
  its weights once at the end (the best trial's checkpoint is kept);
- Ray's storage is the Hydra run folder, or `hardware.storage_path` (a shared mount or an object store) with a
  copy in the run folder when the search returns, so an interrupted search resumes with `tune.resume`; a
  Ctrl-C leaves the search unfinished (never recorded as done) and exits 130;
- the run folder ends with tune/results.csv, best_hparams.yaml, tune_report.md and plots.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sentinel.config.plain import plain
from sentinel.config.schema import SentinelConfig
from sentinel.errors import ConfigError, Interrupted, SentinelError
from sentinel.runtime.applied import APPLIED_FILE, dry_build
from sentinel.runtime.fingerprint import stable_hash
from sentinel.runtime.raycluster import (
    check_nodes_see,
    check_ray_address,
    check_trial_resources,
    connect_ray,
    ray_shutting_down,
    sync_dataset_to_nodes,
)
from sentinel.runtime.runs import (
    claim_run_folder,
    write_state,
)
from sentinel.runtime.tracking.client import Tracker, link_resumed_run
from sentinel.runtime.ultra import check_weights_available
from sentinel.runtime.ultralytics_facts import ultralytics_facts
from sentinel.stages.tune.result import TuneResult
from sentinel.stages.tune.space import (
    check_metric,
    check_search_space,
    config_key,
    make_search_alg,
    ray_space,
    space_probes,
)
from sentinel.stages.tune.storage import (
    RAY_DIR,
    ExperimentStorage,
    experiment_storage,
    fetch_experiment,
    find_resumable,
    remove_staging_copies,
    unfinished_trials,
)
from sentinel.stages.tune.trial import train_trial, trial_fixed_args, trial_setup

if TYPE_CHECKING:
    from sentinel.dataset.prepare import RunDataset

log = logging.getLogger(__name__)


# --- checks that need Ultralytics' argument list -------------------------------------------------------


# --- the trial ------------------------------------------------------------------------------------------


# --- the dry build: every searched value must act ------------------------------------------------------

DRY_BUILD_DIR = "tune/dry_build"  # in the run folder: what a trial at each probe of the space would apply


def check_search_applies(cfg: SentinelConfig, data_yaml: Path, run_dir: Path) -> dict[str, str]:
    """Build a trial at two points of the space and train one batch: every value must be what Ultralytics applies.

    A key that cannot act on this dataset at all (copy-paste without segment masks, class weights with equal
    class counts) is returned with its reason, to be dropped from the search with a warning; any other
    difference fails the search before it starts, naming the key, the asked and the applied value.
    """
    started = time.monotonic()
    fixed = trial_fixed_args(cfg)
    dropped: dict[str, str] = {}
    for end, values in space_probes(cfg.search_space).items():
        folder = run_dir / DRY_BUILD_DIR / end
        check = dry_build(cfg.model.weights, data_yaml, {**fixed, **values}, cfg.tune.epochs, folder)
        for difference in check.found:
            if difference.key in values and difference.dataset_bound:
                dropped[difference.key] = difference.reason
                continue
            raise ConfigError(
                config_key(difference.key, values),
                f"a trial in the {end} part of the space would not train with it: {difference.describe()}",
                f"change it to a value Ultralytics applies (see {folder / APPLIED_FILE})",
            )
    log.info("tune: a trial at each of 2 points of the space applies what it asks (%.1f s)", time.monotonic() - started)
    for name, reason in dropped.items():
        log.warning("tune: search_space.%s dropped from this search: it has no effect here (%s)", name, reason)
    return dropped


def without_keys(cfg: SentinelConfig, dropped: dict[str, str]) -> SentinelConfig:
    """The config with the dropped dimensions taken out of its search space."""
    if not dropped:
        return cfg
    space = {name: spec for name, spec in cfg.search_space.items() if name not in dropped}
    if not space:
        raise ConfigError("search_space", "no dimension can act on this dataset", "search other keys")
    return dataclasses.replace(cfg, search_space=space)


# --- the search -----------------------------------------------------------------------------------------


def tune_fingerprint(cfg: SentinelConfig, dataset_fingerprint: str) -> str:
    """Same dataset and same trials → same search (what mode=all reuses and `tune.resume` may continue).

    Only what the trials use: the search, the fixed training arguments (augmentation with the trial's
    close_mosaic, which model.epochs scales, imgsz, batch, patience, seed, optimizer), the starting weights
    and the tune settings. Fine-tune-only keys (model.output_name) and resources (they change speed, not
    results) are left out.
    """
    tune_settings = plain(cfg.tune)
    tune_settings.pop("resume", None)
    return stable_hash(
        {
            "dataset": dataset_fingerprint,
            "search_space": plain(cfg.search_space),
            "fixed": trial_fixed_args(cfg),
            "weights": cfg.model.weights,
            "tune": tune_settings,
        }
    )


def tune(
    cfg: SentinelConfig, run_dir: Path, dataset: RunDataset, tracker: Tracker, skip_if_done: bool = False
) -> TuneResult:
    """Run the search, write its record into the run folder, return the best hyperparameters."""
    from sentinel.dataset.prepare import data_dir_of
    from sentinel.runtime.runs import link_or_copy, lookup_result, record_result
    from sentinel.stages.tune.report import write_tune_outputs

    if len(cfg.search_space) == 0:
        raise ConfigError("search_space", "is empty", "choose search_space=default or define parameters")
    facts = ultralytics_facts(data_dir_of(cfg))  # the driver never imports Ultralytics (nor torch)
    check_search_space(cfg.search_space, facts)
    check_metric(cfg.tune.metric, facts)
    check_weights_available(cfg.model.weights)
    search_alg = make_search_alg(
        cfg.tune.search_alg, cfg.seed, cfg.tune.metric, cfg.tune.mode, cfg.hardware.max_concurrent_trials
    )
    merged = dataset.merged()
    fingerprint = tune_fingerprint(cfg, merged.fingerprint)
    if skip_if_done and (done := lookup_result("tune", fingerprint, data_dir_of(cfg), needed=("best_hparams",))):
        for name in ("best_hparams.yaml", "tune_report.md"):
            link_or_copy(Path(done["run_dir"]) / name, run_dir / name)
        log.info("tune: skipped, done in %s", done["run_dir"])
        best = yaml.safe_load((run_dir / "best_hparams.yaml").read_text()) or {}
        return TuneResult(run_dir, best, float(done["best_metric"]), 0, None, skipped=True)
    data_dir = data_dir_of(cfg)
    # An address that is not Ray fails in a second, not after the dry builds' tens of seconds; connect_ray
    # relies on this check.
    check_ray_address(cfg.hardware.ray_address.strip())
    claim_run_folder(run_dir, "tune", fingerprint)
    cfg = without_keys(cfg, check_search_applies(cfg, merged.dataset_yaml, run_dir))  # before Ray: seconds
    resume_from = find_resumable(cfg, fingerprint, run_dir, data_dir)
    started_ray = connect_ray(cfg.hardware)
    storage = experiment_storage(cfg, run_dir, resume_from)
    experiment = storage.local
    try:
        check_trial_resources(cfg.hardware)
        if cfg.hardware.ray_address.strip():  # a local Ray is this machine: nothing to check
            if cfg.hardware.dataset_sync:
                sync_dataset_to_nodes(merged.dataset_yaml.parent)
            check_nodes_see(merged.dataset_yaml, storage.writable_folder)
    except SentinelError:
        if started_ray:
            import ray

            ray.shutdown()
        raise
    write_state(run_dir, "tune", fingerprint, "running", data_dir, resumed_from=str(resume_from or ""))
    if resume_from is not None:
        link_resumed_run(tracker, "tune", resume_from)
    try:
        grid = run_search(cfg, merged.dataset_yaml, storage, resume_from, search_alg)
        if started_ray and not cfg.hardware.ray_address.strip():
            remove_staging_copies(storage.name)  # fit() returned: the storage path holds every trial
        if storage.remote:
            fetch_experiment(storage, run_dir / RAY_DIR)
            experiment = run_dir / RAY_DIR
        pending = unfinished_trials(experiment, cfg.tune.num_samples)
        if pending:
            write_state(run_dir, "tune", fingerprint, "interrupted", data_dir, resumed_from=str(resume_from or ""))
            raise Interrupted(
                f"tune: interrupted ({', '.join(pending)} unfinished); nothing was recorded as the best. "
                "Fix: continue it with tune.resume=latest (same inputs) or tune.resume=" + str(resume_from or run_dir)
            )
        with ray_shutting_down(started_ray):  # the report needs no Ray; Ray's shutdown is mostly a wait
            trials_in = experiment if storage.remote else None
            result = write_tune_outputs(grid, cfg, run_dir, tracker, resume_from, trials_in)
        record_result(
            "tune",
            fingerprint,
            run_dir,
            data_dir,
            {
                "best_hparams": str(run_dir / "best_hparams.yaml"),
                "tune_report": str(run_dir / "tune_report.md"),
                "dataset": merged.fingerprint,
                "best_metric": result.best_metric,
            },
        )
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    write_state(run_dir, "tune", fingerprint, "done", data_dir, resumed_from=str(resume_from or ""))
    if resume_from is not None:
        write_state(resume_from, "tune", fingerprint, "done", data_dir, continued_in=str(run_dir))
    return result


def ray_loggers(cfg: SentinelConfig) -> list[Any]:
    """Ray's loggers that add something, and one console line per trial.

    Kept: JSON (each trial's result.json: Tune's own analysis and sentinel.runtime.tracking's nested runs read it)
    and CSV (progress.csv, readable per trial). Dropped: TensorBoard, which the tracking store replaces and
    which renames every `metrics/...(B)` with a console line per metric per epoch.
    """
    import os

    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from sentinel.stages.tune.progress import TrialProgress

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # else Ray adds TensorBoard's logger back
    # Ray's newer console output prints its "Configuration for experiment" box and "View detailed results
    # here" even at verbose=0 (added by ray-project/ray#34952); the older one is silent at verbose=0, and
    # TrialProgress prints what a person needs instead.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    progress = TrialProgress(cfg.tune.metric, str(cfg.tune.mode), cfg.tune.epochs, cfg.tune.num_samples)
    return [JsonLoggerCallback(), CSVLoggerCallback(), progress]


def skip_unsent_callback_telemetry() -> None:
    """With Ray's usage stats off, skip the count of the search's callbacks that Ray would not send anyway.

    tune.run counts the callbacks for its usage stats (ray.air._internal.usage.tag_callbacks, added by
    ray#34904) by importing every logger integration Ray ships (MLflow, W&B, Comet, Aim): 1.3 s in the
    driver before the first trial, whether or not the count is sent. Only when the stats are explicitly off
    (RAY_USAGE_STATS_ENABLED=0 or `ray disable-usage-stats`, as `make` sets) is the count skipped; if Ray
    moves the function, nothing is changed.
    """
    try:
        from ray._common.usage.usage_lib import usage_stats_enabled
        from ray.air._internal import usage
    except ImportError:
        return
    if not usage_stats_enabled() and hasattr(usage, "tag_callbacks"):
        usage.tag_callbacks = lambda callbacks: False


def run_search(
    cfg: SentinelConfig, data_yaml: Path, storage: ExperimentStorage, resume_from: Path | None, search_alg: Any
) -> Any:
    """Ray Tune's Tuner over our trainable: a new search in `storage`, or the restored one."""
    from ray import tune as ray_tune
    from ray.tune.schedulers import ASHAScheduler

    skip_unsent_callback_telemetry()

    trainable = ray_tune.with_resources(
        ray_tune.with_parameters(train_trial, setup=trial_setup(cfg, data_yaml)),
        {"cpu": cfg.hardware.cpu_per_trial, "gpu": cfg.hardware.gpu_per_trial},
    )
    if resume_from is not None:
        log.info("tune: resuming %s", storage.uri)
        tuner = ray_tune.Tuner.restore(storage.uri, trainable=trainable, resume_unfinished=True, resume_errored=True)
        return tuner.fit()
    tuner = ray_tune.Tuner(
        trainable,
        param_space=ray_space(cfg.search_space),
        tune_config=ray_tune.TuneConfig(
            metric=cfg.tune.metric,
            mode=cfg.tune.mode,
            num_samples=cfg.tune.num_samples,
            # No max_concurrent_trials: Ray ignores it for a search_alg passed in, with a warning on every
            # run (ray#36080); make_search_alg gives the limit to the search algorithm itself.
            search_alg=search_alg,
            # A new actor per trial re-imports torch and Ultralytics (seconds each); all our trials
            # ask for the same resources, so Ray can hand a finished trial's process to the next.
            reuse_actors=True,
            scheduler=ASHAScheduler(
                time_attr="training_iteration",
                max_t=cfg.tune.epochs,
                grace_period=cfg.tune.grace_period,
                reduction_factor=cfg.tune.reduction_factor,
            ),
        ),
        run_config=ray_tune.RunConfig(
            name=storage.name,
            storage_path=storage.path,
            # Ray's console output (a table per trial start and result, and TensorBoard's complaints about
            # Ultralytics' metric names) is replaced by TrialProgress's one line per trial.
            verbose=0,
            callbacks=ray_loggers(cfg),
            # A trial's folder (its trial.log, Ultralytics' train/ folder) is written in Ray's staging
            # folder on its node; without this only trials that checkpoint reach the run folder.
            sync_config=ray_tune.SyncConfig(sync_artifacts=True),
            # A trial whose process or node dies is started again on another node. Trials checkpoint only at
            # their end (a per-epoch checkpoint would copy the weights every epoch), so it starts over.
            failure_config=ray_tune.FailureConfig(max_failures=cfg.hardware.max_failures),
        ),
    )
    return tuner.fit()
