"""mode=tune: search `search_space` with Ray Tune's own API, training each trial with Ultralytics.

Why not `model.tune(use_ray=True)`: Ultralytics' run_ray_tune asks every trial for all CPUs (so trials run
one after another), takes no cluster address, shuts Ray down and records no best values. Here:
- resources per trial come from `hardware` (cpu_per_trial, gpu_per_trial; fractions pack trials on a GPU,
  and Ray assigns the devices), and `max_concurrent_trials` trials run at once;
- Ray runs locally (sized by hardware.num_cpus/num_gpus) or joins `hardware.ray_address`, which is checked
  for reachability before anything starts;
- each trial reports its validation metrics every epoch with a fresh `tune.report` (that drives ASHA), and
  its weights once at the end (the best trial's checkpoint is kept);
- Ray's storage is the Hydra run folder, so an interrupted search resumes with `tune.resume`;
- the run folder ends with tune/results.csv, best_hparams.yaml, tune_report.md and plots.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from sentinel.errors import ConfigError, SentinelError
from sentinel.fingerprint import stable_hash
from sentinel.runs import newest_unfinished, write_state
from sentinel.ultra import check_weights_available, fixed_training_args
from sentinel.validate import param_specs

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
SEARCH_ALG_PACKAGES = {"optuna": "optuna", "hyperopt": "hyperopt"}


@dataclass(frozen=True)
class TuneResult:
    run_dir: Path
    best_hparams: dict[str, Any]
    best_metric: float
    trials: int
    resumed_from: Path | None
    skipped: bool = False


# --- checks that need Ultralytics' argument list -------------------------------------------------------


def check_search_space(space: DictConfig) -> None:
    """Every parameter must be a real, tunable Ultralytics training argument with sensible bounds."""
    from ultralytics.cfg import CFG_FRACTION_KEYS, DEFAULT_CFG_DICT

    for name, spec in param_specs(space).items():
        key = f"search_space.{name}"
        if name not in DEFAULT_CFG_DICT:
            raise ConfigError(
                key,
                f"{name!r} is not an Ultralytics training argument",
                "see ultralytics/cfg/default.yaml for the names",
            )
        if name in NOT_TUNABLE:
            raise ConfigError(key, f"{name!r} is set by Sentinel, not tuned", "remove it from the search space")
        values = list(spec.values or []) if spec.dist == "choice" else [spec.low, spec.high]
        if name in CFG_FRACTION_KEYS and any(not 0.0 <= float(v) <= 1.0 for v in values):
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


def make_search_alg(name: str, seed: int, metric: str, mode: str) -> Any:
    """Ray's random generator (seeded, so the same seed samples the same trials); optuna and hyperopt need their
    packages."""
    if name == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed)
    try:
        if name == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            return OptunaSearch(metric=metric, mode=mode, seed=seed)
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(metric=metric, mode=mode, random_state_seed=seed)
    except (ImportError, AssertionError):
        raise ConfigError(
            "tune.search_alg",
            f"{name} needs the package {SEARCH_ALG_PACKAGES[name]!r}",
            f"pip install {SEARCH_ALG_PACKAGES[name]}",
        ) from None


# --- Ray connection -------------------------------------------------------------------------------------


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast and clearly on an address Ray would wait on for a long time, or misread."""
    if address in ("", "auto", "local"):
        return
    if address.startswith(("http://", "https://")):
        raise ConfigError(
            "hardware.ray_address",
            f"{address!r} looks like the dashboard URL",
            "use ray://<head>:10001 (Ray Client) or <head>:6379, or auto on a cluster node",
        )
    host_port = address.removeprefix("ray://")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("hardware.ray_address", f"{address!r} is not host:port", "e.g. ray://head:10001")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as error:
        raise SentinelError(
            f"Ray cluster at {address} is not reachable ({error}). Fix: start it (`ray start --head`), check "
            'host and port, or set hardware.ray_address="" to run Ray locally'
        ) from None


def connect_ray(hw: DictConfig) -> bool:
    """Start or join Ray; returns True when we started it (and so must shut it down)."""
    import ray

    address = hw.ray_address.strip()
    check_ray_address(address)
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address:
        kwargs["address"] = address
    else:
        kwargs.update(num_cpus=hw.num_cpus, num_gpus=hw.num_gpus)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise SentinelError(f"could not start or join Ray ({address or 'local'}): {error}") from None
    return True


# --- the trial ------------------------------------------------------------------------------------------


class EpochReporter:
    """Ultralytics callbacks that report each epoch to Ray Tune, and the weights after the last one."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    @staticmethod
    def drop_builtin_raytune(trainer: Any) -> None:
        # Ultralytics adds its own tune.report callback to every trainer when its `raytune` setting is on
        # (the default; ultralytics/utils/callbacks/raytune.py). Two reports per epoch would make ASHA
        # count two iterations per epoch, so ours is the only one.
        from ultralytics.utils.callbacks import raytune

        hooks = trainer.callbacks["on_fit_epoch_end"]
        hooks[:] = [hook for hook in hooks if hook is not raytune.on_fit_epoch_end]

    def on_fit_epoch_end(self, trainer: Any) -> None:
        from ray import tune

        metrics = {k: float(v) for k, v in trainer.metrics.items()}
        metrics["epoch"] = trainer.epoch + 1
        checkpoint = None
        if trainer.epoch + 1 >= self.epochs and Path(trainer.wdir, "best.pt").is_file():
            checkpoint = tune.Checkpoint.from_directory(str(trainer.wdir))
        tune.report(metrics, checkpoint=checkpoint)


def train_trial(config: dict[str, Any], setup: dict[str, Any]) -> None:
    """One Ray Tune trial: train with Ultralytics using the fixed arguments overridden by `config`."""
    import torch
    from ray import tune
    from ultralytics import YOLO

    torch.set_num_threads(max(1, int(setup["cpu_per_trial"])))
    reporter = EpochReporter(setup["epochs"])
    model = YOLO(setup["weights"])
    model.add_callback("on_pretrain_routine_start", reporter.drop_builtin_raytune)
    model.add_callback("on_fit_epoch_end", reporter.on_fit_epoch_end)
    model.train(
        data=setup["data"],
        epochs=setup["epochs"],
        device=setup["device"],
        workers=setup["workers"],
        project=tune.get_context().get_trial_dir(),
        name="train",
        exist_ok=True,
        plots=False,
        verbose=False,
        **{**setup["fixed"], **config},
    )


def trial_setup(cfg: DictConfig, data_yaml: Path) -> dict[str, Any]:
    """What every trial needs, as plain values (it travels to Ray workers)."""
    return {
        "data": str(data_yaml),
        "weights": cfg.model.weights,
        "epochs": cfg.tune.epochs,
        "device": "0" if cfg.hardware.gpu_per_trial > 0 else "cpu",  # Ray sets CUDA_VISIBLE_DEVICES per trial
        "workers": cfg.hardware.workers,
        "cpu_per_trial": cfg.hardware.cpu_per_trial,
        "fixed": fixed_training_args(cfg),
    }


# --- the search -----------------------------------------------------------------------------------------


def tune_fingerprint(cfg: DictConfig, dataset_fingerprint: str) -> str:
    """Same dataset, space, model and tune settings → same search (what `tune.resume` may continue)."""
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("search_space", "augmentation", "model", "tune")}
    parts["tune"].pop("resume", None)
    return stable_hash({"dataset": dataset_fingerprint, "seed": cfg.seed, **parts})


def find_resumable(cfg: DictConfig, fingerprint: str, run_dir: Path) -> Path | None:
    """The Ray experiment to continue: an explicit run folder, or the newest unfinished one with our inputs."""
    wanted = str(cfg.tune.resume).strip()
    if wanted.lower() in ("", "false"):
        return None
    if wanted.lower() not in ("true", "latest"):
        folder = Path(wanted).expanduser().resolve()
        if not (folder / RAY_DIR).is_dir():
            raise ConfigError("tune.resume", f"{folder} holds no tune run ({RAY_DIR}/ missing)", "give a run folder")
        return folder
    folder = newest_unfinished("tune", fingerprint, exclude=run_dir, needs=RAY_DIR)
    if folder is None:
        log.info("tune: nothing to resume for these inputs; starting a new search")
    return folder


def tune(cfg: DictConfig, run_dir: Path, skip_if_done: bool = False) -> TuneResult:
    """Run the search, write its record into the run folder, return the best hyperparameters."""
    from ray import tune as ray_tune
    from ray.tune.schedulers import ASHAScheduler

    from sentinel.prep import data_dir_of, prepare_dataset
    from sentinel.runs import link_or_copy, lookup_result, record_result
    from sentinel.tune_report import write_tune_outputs

    if len(cfg.search_space) == 0:
        raise ConfigError("search_space", "is empty", "choose search_space=default or define parameters")
    check_search_space(cfg.search_space)
    check_weights_available(cfg.model.weights)
    search_alg = make_search_alg(cfg.tune.search_alg, cfg.seed, cfg.tune.metric, cfg.tune.mode)
    merged = prepare_dataset(cfg)
    fingerprint = tune_fingerprint(cfg, merged.fingerprint)
    if skip_if_done and (done := lookup_result("tune", fingerprint, data_dir_of(cfg), needed=("best_hparams",))):
        for name in ("best_hparams.yaml", "tune_report.md"):
            link_or_copy(Path(done["run_dir"]) / name, run_dir / name)
        log.info("tune: skipped, done in %s", done["run_dir"])
        best = yaml.safe_load((run_dir / "best_hparams.yaml").read_text()) or {}
        return TuneResult(run_dir, best, float(done["best_metric"]), 0, None, skipped=True)
    resume_from = find_resumable(cfg, fingerprint, run_dir)
    started_ray = connect_ray(cfg.hardware)
    experiment = (resume_from or run_dir) / RAY_DIR
    write_state(run_dir, "tune", fingerprint, "running", resumed_from=str(resume_from or ""))
    try:
        trainable = ray_tune.with_resources(
            ray_tune.with_parameters(train_trial, setup=trial_setup(cfg, merged.dataset_yaml)),
            {"cpu": cfg.hardware.cpu_per_trial, "gpu": cfg.hardware.gpu_per_trial},
        )
        if resume_from is not None:
            log.info("tune: resuming %s", experiment)
            tuner = ray_tune.Tuner.restore(
                str(experiment), trainable=trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            tuner = ray_tune.Tuner(
                trainable,
                param_space=ray_space(cfg.search_space),
                tune_config=ray_tune.TuneConfig(
                    metric=cfg.tune.metric,
                    mode=cfg.tune.mode,
                    num_samples=cfg.tune.num_samples,
                    max_concurrent_trials=cfg.hardware.max_concurrent_trials,
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
                run_config=ray_tune.RunConfig(name=RAY_DIR, storage_path=str(experiment.parent), verbose=1),
            )
        grid = tuner.fit()
        result = write_tune_outputs(grid, cfg, run_dir, resume_from)
        record_result(
            "tune",
            fingerprint,
            run_dir,
            data_dir_of(cfg),
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
    write_state(run_dir, "tune", fingerprint, "done", resumed_from=str(resume_from or ""))
    if resume_from is not None:
        write_state(resume_from, "tune", fingerprint, "done")
    return result
