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

import copy
import difflib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from sentinel.config.schema import AugmentationConfig
from sentinel.config.validate import param_specs
from sentinel.errors import ConfigError, Interrupted, SentinelError
from sentinel.runtime.applied import APPLIED_FILE, AppliedCheck, dry_build
from sentinel.runtime.fingerprint import stable_hash
from sentinel.runtime.raycluster import (
    check_nodes_see,
    check_trial_resources,
    connect_ray,
    ray_shutting_down,
    sync_dataset_to_nodes,
)
from sentinel.runtime.runs import (
    claim_run_folder,
    newest_unfinished,
    read_json,
    read_state,
    write_json_atomic,
    write_state,
)
from sentinel.runtime.tracking import Tracker, link_resumed_run
from sentinel.runtime.ultra import check_weights_available, fixed_training_args, sentinel_trainer
from sentinel.runtime.ultralytics_facts import UltralyticsFacts, ultralytics_facts
from sentinel.stages.tune.result import TuneResult

if TYPE_CHECKING:
    from sentinel.dataset.prepare import RunDataset

log = logging.getLogger(__name__)

RAY_DIR = "ray_tune"  # Ray's experiment folder inside the run folder
# Training arguments a search space must not touch: they belong to Sentinel or to Ray, not to the search.
NOT_TUNABLE = frozenset(
    {
        "data",
        "epochs",
        "model",
        "device",
        "project",
        "name",
        "exist_ok",
        "resume",
        "workers",
        "mode",
        "task",
        "save_dir",
        "pretrained",
    }
)
VAL_LOSSES = ("val/box_loss", "val/cls_loss", "val/dfl_loss")  # reported with the metrics each epoch
SEARCH_ALG_PACKAGES = {"optuna": "optuna", "hyperopt": "hyperopt"}


# --- checks that need Ultralytics' argument list -------------------------------------------------------


def check_search_space(space: DictConfig, facts: UltralyticsFacts) -> None:
    """Every parameter must be a real, tunable Ultralytics training argument with sensible bounds."""
    for name, spec in param_specs(space).items():
        key = f"search_space.{name}"
        if name not in facts.arguments:
            raise ConfigError(
                key,
                f"{name!r} is not an Ultralytics training argument",
                "see ultralytics/cfg/default.yaml for the names",
            )
        if name in NOT_TUNABLE:
            raise ConfigError(key, f"{name!r} is set by Sentinel, not tuned", "remove it from the search space")
        values = list(spec.values or []) if spec.dist == "choice" else [spec.low, spec.high]
        if name in facts.fractions and any(not 0.0 <= float(v) <= 1.0 for v in values):
            raise ConfigError(key, f"{name} is a fraction; {values} is not within [0, 1]")
        if spec.dist == "randint" and any(float(v) != int(v) for v in values):
            raise ConfigError(key, f"randint needs whole-number bounds, got {values}")


def ray_space(space: DictConfig) -> dict[str, Any]:
    """search_space → Ray Tune distributions. randint is Ray's: integers in [low, high)."""
    from ray import tune

    make = {
        "uniform": lambda s: tune.uniform(s.low, s.high),
        "loguniform": lambda s: tune.loguniform(s.low, s.high),
        "randint": lambda s: tune.randint(int(s.low), int(s.high)),
        "choice": lambda s: tune.choice(list(s.values)),
    }
    return {name: make[spec.dist](spec) for name, spec in param_specs(space).items()}


def make_search_alg(name: str, seed: int, metric: str, mode: str, max_concurrent: int) -> Any:
    """Ray's random generator (seeded, so the same seed samples the same trials); optuna and hyperopt need their
    packages. Each takes the concurrency limit itself (BasicVariantGenerator's own, a ConcurrencyLimiter around
    the others): Ray ignores TuneConfig's max_concurrent_trials for a generator passed in, with only a warning
    (ray#36080), so run_search does not pass it."""
    if name == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)
    from ray.tune.search import ConcurrencyLimiter

    try:
        if name == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            return ConcurrencyLimiter(OptunaSearch(metric=metric, mode=mode, seed=seed), max_concurrent)
        from ray.tune.search.hyperopt import HyperOptSearch

        return ConcurrencyLimiter(HyperOptSearch(metric=metric, mode=mode, random_state_seed=seed), max_concurrent)
    except (ImportError, AssertionError):
        raise ConfigError(
            "tune.search_alg",
            f"{name} needs the package {SEARCH_ALG_PACKAGES[name]!r}",
            f"pip install {SEARCH_ALG_PACKAGES[name]}",
        ) from None


def check_metric(metric: str, facts: UltralyticsFacts) -> None:
    """tune.metric must be a name Ultralytics reports each epoch; a typo would fail every trial after epoch 1."""
    known = [*facts.metrics, *VAL_LOSSES]
    if metric not in known:
        close = difflib.get_close_matches(metric, known, n=1)
        hint = f"did you mean {close[0]}?" if close else "use one of " + ", ".join(known)
        raise ConfigError("tune.metric", f"{metric!r} is not a metric Ultralytics reports", hint)


# --- the trial ------------------------------------------------------------------------------------------


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


def trial_fixed_args(cfg: DictConfig) -> dict[str, Any]:
    """The fixed training arguments of a trial: the fine-tune's, with close_mosaic scaled to the trial."""
    args = fixed_training_args(cfg)
    args["close_mosaic"] = trial_close_mosaic(int(args["close_mosaic"]), cfg.model.epochs, cfg.tune.epochs)
    return args


def trial_setup(cfg: DictConfig, data_yaml: Path) -> dict[str, Any]:
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


# --- the dry build: every searched value must act ------------------------------------------------------

DRY_BUILD_DIR = "tune/dry_build"  # in the run folder: what a trial at each probe of the space would apply


def space_probes(space: DictConfig) -> dict[str, dict[str, Any]]:
    """Two points of the space: every dimension at a quarter and at three quarters of its range (in its own
    scale; a choice's first and last value).

    Not the ends: at a range's low end a zero switches related keys off (warmup_epochs=0 leaves
    warmup_momentum nothing to act on), which a search samples almost never, and would refuse a sound space.
    """
    lower: dict[str, Any] = {}
    upper: dict[str, Any] = {}
    for name, spec in param_specs(space).items():
        if spec.dist == "choice":
            lower[name], upper[name] = spec.values[0], spec.values[-1]
        elif spec.dist == "randint":  # Ray's randint excludes high
            span = int(spec.high) - 1 - int(spec.low)
            lower[name], upper[name] = int(spec.low) + round(span / 4), int(spec.low) + round(3 * span / 4)
        elif spec.dist == "loguniform":
            ratio = spec.high / spec.low
            lower[name], upper[name] = spec.low * ratio**0.25, spec.low * ratio**0.75
        else:
            span = spec.high - spec.low
            lower[name], upper[name] = spec.low + span / 4, spec.low + 3 * span / 4
    return {"lower": lower, "upper": upper}


def config_key(name: str, searched: dict[str, Any]) -> str:
    """The config key a training argument came from, for an error a user can act on."""
    if name in searched:
        return f"search_space.{name}"
    if name in AugmentationConfig.__dataclass_fields__:
        return f"augmentation.{name}"
    return {"cls_pw": "training.class_weights", "optimizer": "training.optimizer"}.get(name, f"model.{name}")


def check_search_applies(cfg: DictConfig, data_yaml: Path, run_dir: Path) -> dict[str, str]:
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


def without_keys(cfg: DictConfig, dropped: dict[str, str]) -> DictConfig:
    """The config with the dropped dimensions taken out of its search space."""
    if not dropped:
        return cfg
    narrowed = copy.deepcopy(cfg)
    with open_dict(narrowed):
        for name in dropped:
            del narrowed.search_space[name]
    if len(narrowed.search_space) == 0:
        raise ConfigError("search_space", "no dimension can act on this dataset", "search other keys")
    return narrowed


# --- the search -----------------------------------------------------------------------------------------


def tune_fingerprint(cfg: DictConfig, dataset_fingerprint: str) -> str:
    """Same dataset and same trials → same search (what mode=all reuses and `tune.resume` may continue).

    Only what the trials use: the search, the fixed training arguments (augmentation with the trial's
    close_mosaic, which model.epochs scales, imgsz, batch, patience, seed, optimizer), the starting weights
    and the tune settings. Fine-tune-only keys (model.output_name) and resources (they change speed, not
    results) are left out.
    """
    tune_settings = OmegaConf.to_container(cfg.tune, resolve=True)
    tune_settings.pop("resume", None)
    return stable_hash(
        {
            "dataset": dataset_fingerprint,
            "search_space": OmegaConf.to_container(cfg.search_space, resolve=True),
            "fixed": trial_fixed_args(cfg),
            "weights": cfg.model.weights,
            "tune": tune_settings,
        }
    )


STORAGE_RECORD = "storage.json"  # in the run folder's ray_tune/ when Ray's storage is hardware.storage_path


@dataclass(frozen=True)
class ExperimentStorage:
    """Where Ray Tune keeps a search: `path`/`name`. By default the run folder's ray_tune/ itself; with
    hardware.storage_path (a shared mount, s3://, gs://, ...) a folder there, copied into the run folder's
    ray_tune/ when the search returns, so the reports read it like any other run."""

    path: str  # Ray's storage_path
    name: str  # the experiment's folder in it
    local: Path  # the run folder's ray_tune/ (the experiment itself, or its copy)

    @property
    def remote(self) -> bool:
        return Path(self.path) / self.name != self.local

    @property
    def uri(self) -> str:
        return f"{self.path.rstrip('/')}/{self.name}"

    @property
    def writable_folder(self) -> str:
        """What every node must be able to write: the storage folder when it is a path, else the run folder."""
        return self.path if self.remote and "://" not in self.path else str(self.local.parent)


def experiment_storage(cfg: DictConfig, run_dir: Path, resume_from: Path | None) -> ExperimentStorage:
    """A new search's storage from hardware.storage_path; a resumed one's from where it was (its record)."""
    folder = resume_from or run_dir
    record = folder / RAY_DIR / STORAGE_RECORD
    if resume_from is not None:
        if not record.is_file():
            return ExperimentStorage(str(resume_from), RAY_DIR, resume_from / RAY_DIR)
        kept = read_json(record, "the record of where the search kept its trials")
        return ExperimentStorage(kept["storage_path"], kept["name"], run_dir / RAY_DIR)
    wanted = str(cfg.hardware.storage_path).strip()
    if not wanted:
        return ExperimentStorage(str(run_dir), RAY_DIR, run_dir / RAY_DIR)
    path = wanted if "://" in wanted else str(Path(wanted).expanduser().resolve())
    if "://" not in path:
        Path(path).mkdir(parents=True, exist_ok=True)  # on a shared mount: the nodes check they can write it
    storage = ExperimentStorage(path, f"{run_dir.name}-{stable_hash(str(run_dir))[:12]}", run_dir / RAY_DIR)
    record.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, {"storage_path": storage.path, "name": storage.name})  # a resume reads it
    return storage


def fetch_experiment(storage: ExperimentStorage, local: Path) -> None:
    """Copy the experiment from Ray's storage into the run folder's ray_tune/ (a temporary sibling renamed
    into place), keeping the record of where it lives so a resume continues it there."""
    import pyarrow.fs

    from sentinel.runtime.atomic import atomic_build, target_lock

    with target_lock(local), atomic_build(local) as tmp:
        pyarrow.fs.copy_files(storage.uri, str(tmp))
        write_json_atomic(tmp / STORAGE_RECORD, {"storage_path": storage.path, "name": storage.name})
    log.info("tune: copied the search from %s into %s", storage.uri, local)


def find_resumable(cfg: DictConfig, fingerprint: str, run_dir: Path, data_dir: Path) -> Path | None:
    """The Ray experiment to continue: an explicit run folder, or the newest unfinished one with our inputs."""
    wanted = str(cfg.tune.resume).strip()
    if wanted.lower() in ("", "false"):
        return None
    if wanted.lower() not in ("true", "latest"):
        folder = Path(wanted).expanduser().resolve()
        if not (folder / RAY_DIR).is_dir():
            raise ConfigError("tune.resume", f"{folder} holds no tune run ({RAY_DIR}/ missing)", "give a run folder")
        state = read_state(folder, "tune") or {}
        if state.get("key") != fingerprint:
            raise ConfigError(
                "tune.resume",
                f"{folder} searched other inputs (dataset, search space, training or tune settings differ; "
                "see its config_resolved.yaml)",
                "resume with the same datasets, merge and tune settings, or start a new search",
            )
        if state.get("status") == "done":
            raise ConfigError("tune.resume", f"the search in {folder} already finished", "use its best_hparams.yaml")
        return folder
    folder = newest_unfinished("tune", fingerprint, data_dir, exclude=run_dir, needs=RAY_DIR)
    if folder is None:
        log.info("tune: nothing to resume for these inputs; starting a new search")
    return folder


def unfinished_trials(experiment: Path, num_samples: int) -> list[str]:
    """Trials a Ctrl-C left unfinished: running or pending, or never started. Empty when the search ended.

    Ray Tune catches SIGINT, saves its experiment state one last time and returns a ResultGrid as if the
    search had ended (ray#13767; ray/tune/tune.py, "Experiment has been interrupted"); in memory the stopped
    trials then read TERMINATED. The saved state keeps what was true at the interrupt, so it is read instead.
    """
    states = sorted(experiment.glob("experiment_state-*.json"))  # named by start time; Ray reads the newest
    if not states:
        return [f"{num_samples} trial(s) never started"]
    trials = [json.loads(trial) for trial, _ in json.loads(states[-1].read_text())["trial_data"]]
    unfinished = [t["trial_id"] for t in trials if t["status"] not in ("TERMINATED", "ERROR")]
    if len(trials) < num_samples:
        unfinished.append(f"{num_samples - len(trials)} trial(s) never started")
    return unfinished


def tune(
    cfg: DictConfig, run_dir: Path, dataset: RunDataset, tracker: Tracker, skip_if_done: bool = False
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


def remove_staging_copies(experiment_name: str) -> None:
    """Remove this search's staging folders from the local Ray session, once `fit()` has returned.

    Ray Tune writes each trial's folder (Ultralytics' weights included) under the Ray session's `artifacts/`
    on the trial's node and copies it to the storage path; the staging copies stay in the machine's temp
    folder after Ray shuts down (0.2 GB for the demo's 4 trials, GBs for a real search). Only for a Ray we
    started on this machine: its session and every trial folder in it are this search's, and the storage
    path (the run folder, or hardware.storage_path) holds them all by the time `fit()` returns; if it raised,
    they are left alone (they may hold results not yet copied). A resume reads the storage path.
    """
    from ray.train.constants import _get_ray_train_session_dir  # Ray's own path; it has no public accessor

    for staged in Path(_get_ray_train_session_dir()).glob(f"*/{experiment_name}"):
        shutil.rmtree(staged, ignore_errors=True)


def ray_loggers(cfg: DictConfig) -> list[Any]:
    """Ray's loggers that add something, and one console line per trial.

    Kept: JSON (each trial's result.json: Tune's own analysis and sentinel.runtime.tracking's nested runs read it)
    and CSV (progress.csv, readable per trial). Dropped: TensorBoard, which the tracking store replaces and
    which renames every `metrics/...(B)` with a console line per metric per epoch.
    """
    import os

    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from sentinel.stages.tune.progress import TrialProgress

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # else Ray adds TensorBoard's logger back
    progress = TrialProgress(cfg.tune.metric, cfg.tune.epochs, cfg.tune.num_samples)
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
    cfg: DictConfig, data_yaml: Path, storage: ExperimentStorage, resume_from: Path | None, search_alg: Any
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
