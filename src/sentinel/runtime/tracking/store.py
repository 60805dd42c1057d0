"""The MLflow store: where the local one lives, its lock while it is created, checks that a server answers as MLflow,
the experiment, a project folder that moved, runs whose process died, and registered models."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

from sentinel.errors import ConfigError, SentinelError
from sentinel.runtime.atomic import target_lock
from sentinel.runtime.redaction import redact

log = logging.getLogger(__name__)


STORE_FILE = "mlflow.db"  # the local store, in paths.tracking (default outputs/, beside the run folders)
ARTIFACTS_DIR = "mlartifacts"  # the local store's artefacts, beside it
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def local_store_dir(launch_dir: Path, folder: str) -> Path:
    """`paths.tracking` as a folder: relative to the launch folder, like the run folders."""
    return launch_dir / Path(folder).expanduser()


def tracking_uri(uri: str, store_dir: Path) -> str:
    """`tracking.uri`, or the local SQLite store in `store_dir` (local_store_dir)."""
    if uri.strip():
        return uri.strip()
    store_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store_dir / STORE_FILE}"


@contextlib.contextmanager
def local_store_lock(uri: str, timeout_s: float) -> Iterator[None]:
    """Hold a file lock beside a SQLite store while the first process to open it creates its tables.

    MLflow creates and migrates a new SQLite store on first use, without a lock: two jobs of a parallel
    sweep opening it at once fail with "table _alembic_tmp_metrics already exists". Later opens only read
    the schema version, so the lock is held for milliseconds.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    store = Path(uri.removeprefix("sqlite:///"))
    wait_s = max(60.0, timeout_s)
    try:
        with target_lock(store, timeout_s=wait_s):
            yield
    except filelock.Timeout:
        raise SentinelError(
            f"tracking: waited {wait_s:g} s for another run to finish setting up the MLflow store {store} "
            f"(lock file {store.parent / f'.{store.name}.lock'}); if no other run is starting, delete the lock file"
        ) from None


SQLITE_HEADER = b"SQLite format 3\x00"


def check_local_store(uri: str) -> None:
    """A local SQLite store must be a file SQLite can open and this process can write, or not exist yet.

    MLflow retries a store it cannot open for about two minutes before it gives up, and then names no path.
    """
    if not uri.startswith("sqlite:///"):
        return
    store = Path(uri.removeprefix("sqlite:///"))
    fix = "move it out of the way (a new store is made), set tracking.uri, or run with tracking=none"
    if store.exists() and not store.is_file():
        raise ConfigError("tracking.uri", f"the local MLflow store {store} is not a file", fix)
    if store.is_file():
        try:
            with open(store, "rb") as handle:
                header = handle.read(len(SQLITE_HEADER))
        except OSError as error:
            problem = f"cannot read the local MLflow store {store} ({error.strerror})"
            raise ConfigError("tracking.uri", problem, fix) from None
        if header and header != SQLITE_HEADER:
            raise ConfigError("tracking.uri", f"{store} is not an SQLite database (damaged or another file)", fix)
        if not os.access(store, os.W_OK) or not os.access(store.parent, os.W_OK):
            raise ConfigError("tracking.uri", f"the local MLflow store {store} (or its folder) is read-only", fix)


def check_reachable(uri: str, timeout_s: float) -> None:
    """An HTTP tracking server must answer its /health endpoint now, not after an hour of training; a local
    store must be one MLflow can use (check_local_store)."""
    check_local_store(uri)
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        response = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
        response.raise_for_status()
        probe = requests.get(uri.rstrip("/") + MLFLOW_PROBE, timeout=timeout_s, auth=_basic_auth())
    except requests.RequestException as error:
        raise ConfigError(
            "tracking.uri",
            f"no MLflow server answers at {redact(uri)} within {timeout_s:g} s ({type(error).__name__})",
            "start the server (mlflow server --host 0.0.0.0 --port 5000), correct tracking.uri, "
            "or run with tracking=none",
        ) from None
    if probe.status_code in (401, 403):
        raise ConfigError(
            "tracking.uri",
            f"the MLflow server at {redact(uri)} refused the request (HTTP {probe.status_code})",
            "export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (MLflow reads them)",
        )
    if not _speaks_mlflow(probe):
        kind = probe.headers.get("Content-Type", "no content type").split(";")[0]
        raise ConfigError(
            "tracking.uri",
            f"{redact(uri)} answers, but not as an MLflow tracking server ({MLFLOW_PROBE}: HTTP "
            f"{probe.status_code}, {kind})",
            "give the address of an MLflow server (mlflow server --port 5000), or run with tracking=none",
        )


MLFLOW_PROBE = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"  # any MLflow answers in JSON


def _speaks_mlflow(response: Any) -> bool:
    """MLflow's REST API answers in JSON: the experiment, or an error with MLflow's error_code."""
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and ("experiment" in body or "error_code" in body)


def _basic_auth() -> tuple[str, str] | None:
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    return (user, password) if user and password else None


def ensure_experiment(client: Any, name: str, uri: str, store_dir: Path) -> str:
    """The experiment's id, creating it (with artefacts beside a local store, not in ./mlruns) if needed."""
    found = client.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage == "deleted":  # MLflow keeps the name, and refuses runs in it
        raise SentinelError(
            f"the MLflow experiment {name!r} in {redact(uri)} was deleted. Fix: restore it (mlflow experiments "
            f"restore --experiment-id {found.experiment_id}) or record elsewhere (tracking.experiment=<another>)"
        )
    if found is None:
        location = (store_dir / ARTIFACTS_DIR).resolve().as_uri() if uri.startswith("sqlite:") else None
        with contextlib.suppress(Exception):  # another process may create it between our two calls
            client.create_experiment(name, artifact_location=location)
        found = client.get_experiment_by_name(name)
        if found is None:
            raise SentinelError(f"tracking: could not create the MLflow experiment {name!r} in {redact(uri)}")
    if EXPERIMENT_KIND[0] not in found.tags:
        # MLflow 3's UI opens an experiment without this tag on its GenAI (traces) overview; a detector's
        # runs, metrics and models are "model training", so the UI opens on the runs table.
        client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
    return found.experiment_id


ARTIFACT_COLUMNS = (  # MLflow 3's SQL schema: where a local store keeps artefact locations
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)


def follow_moved_project(store: Path, store_dir: Path) -> None:
    """The default local store's artefact locations name the folder beside it, wherever the project now is.

    MLflow keeps absolute artefact locations in the store; after `mv project elsewhere` every new run would
    write its artefacts under the old path (made again), and the earlier runs' artefacts, moved with the
    project, could not be found. MLflow has no call to change an experiment's location, so for Sentinel's own
    default store (never a store the user named) the old prefix is replaced in place, under the store's lock.
    """
    import sqlite3

    new = (store_dir / ARTIFACTS_DIR).resolve().as_uri()
    layout = f"/{store_dir.name}/{ARTIFACTS_DIR}"  # the folder beside the store, under its old path
    try:
        with contextlib.closing(sqlite3.connect(store)) as db, db:
            olds = {
                location
                for (location,) in db.execute("SELECT artifact_location FROM experiments")
                if location and location.startswith("file://") and location.endswith(layout)
            } - {new}
            for old in olds:
                for table, column in ARTIFACT_COLUMNS:  # names from the constant above, never from input
                    db.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
                        (new, len(old) + 1, len(old), old),
                    )
                log.warning("tracking: the project moved from %s; the store's artefacts are now under %s", old, new)
    except sqlite3.Error as error:
        log.warning("tracking: could not point the store %s at its new folder: %s", store, error)


def mark_dead_runs_killed(client: Any, experiment_id: str, own_pid: int) -> None:
    """Runs of this machine still RUNNING whose process is gone (killed) are marked KILLED, not left running."""
    host = socket.gethostname()
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`sentinel.host` = '{host}'",
        max_results=1000,
    )
    for run in runs:
        pid = int(run.data.tags.get("sentinel.pid", "0") or 0)
        if pid and pid != own_pid and not process_alive(pid):
            client.set_terminated(run.info.run_id, "KILLED")
            log.info("tracking: MLflow run %s (process %s is gone) marked KILLED", run.info.run_id, pid)


def ensure_registered_model(client: Any, name: str) -> None:
    """Create registered model `name`; one that exists already (another job of a sweep may create it meanwhile)
    is fine. This is what mlflow.register_model does before it adds a version; that function itself cannot be
    used: for a runs:/ URI it wants an MLflow model (an MLmodel file), and our weights are a plain .pt file."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ALREADY_EXISTS, RESOURCE_ALREADY_EXISTS, ErrorCode

    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code not in (ErrorCode.Name(RESOURCE_ALREADY_EXISTS), ErrorCode.Name(ALREADY_EXISTS)):
            raise


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def download_registered_model(uri: str, tracking: str, into: Path, key: str) -> Path:
    """The files of a registered version (`models:/<name>/<version|latest>` or `models:/<name>@<alias>`),
    downloaded to a temporary folder and renamed to `into`; a URI the registry does not know is a ConfigError.

    The version is looked up with a client of this store (mlflow.artifacts.download_artifacts would read a
    models:/ URI from the process-wide registry URI instead, whatever tracking_uri it is given).
    """
    import shutil
    import tempfile

    import mlflow.artifacts
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    into.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{into.name}.tmp-", dir=into.parent))
    try:
        try:
            version = registered_version(MlflowClient(tracking_uri=tracking, registry_uri=tracking), uri, key)
            mlflow.artifacts.download_artifacts(
                artifact_uri=version.source, dst_path=str(staging), tracking_uri=tracking
            )
        except MlflowException as error:
            first = str(error.message).splitlines()[0] if str(error.message) else type(error).__name__
            raise ConfigError(
                key,
                f"{uri} is not in the registry at {tracking} ({first})",
                "give models:/<name>/<version>, models:/<name>/latest or models:/<name>@champion of a registered model",
            ) from None
        os.replace(staging / Path(version.source.rstrip("/")).name, into)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return into


def registered_version(client: Any, uri: str, key: str) -> Any:
    """The ModelVersion a models:/ URI names."""
    rest = uri.removeprefix("models:/").strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, _, version = rest.partition("/")
    if not name or not version:
        raise ConfigError(
            key,
            f"{uri} names no version",
            "e.g. models:/sentinel/3, models:/sentinel/latest or models:/sentinel@champion",
        )
    if version == "latest":
        versions = client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"], max_results=1)
        if not versions:
            raise ConfigError(
                key, f"registered model {name!r} has no version", "fine-tune with tracking on to register one"
            )
        return versions[0]
    return client.get_model_version(name, version)
