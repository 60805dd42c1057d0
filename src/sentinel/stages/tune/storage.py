"""Where a search keeps its state: Ray's storage (the run folder or `hardware.storage_path`), fetching it back,
and finding an unfinished search with the same inputs to resume."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from sentinel.config.schema import SentinelConfig
from sentinel.errors import ConfigError
from sentinel.runtime.fingerprint import stable_hash
from sentinel.runtime.runs import (
    newest_unfinished,
    read_json,
    read_state,
    write_json_atomic,
)

log = logging.getLogger(__name__)


RAY_DIR = "ray_tune"  # Ray's experiment folder inside the run folder
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


def experiment_storage(cfg: SentinelConfig, run_dir: Path, resume_from: Path | None) -> ExperimentStorage:
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


def find_resumable(cfg: SentinelConfig, fingerprint: str, run_dir: Path, data_dir: Path) -> Path | None:
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
