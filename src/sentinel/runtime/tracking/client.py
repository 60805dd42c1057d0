"""The tracker a run logs through: Tracker (logs nothing), MlflowTracker (MLflow's client, in the tracking
service) and ServiceTracker (train.py's side, which sends each call to the service). See the package docstring."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import select
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentinel.config.plain import plain
from sentinel.config.schema import SentinelConfig
from sentinel.errors import SentinelError
from sentinel.runtime.redaction import redact
from sentinel.runtime.runs import read_json, write_json_atomic
from sentinel.runtime.tracking.names import (
    MAX_PARAM_CHARS,
    as_float,
    experiment_name,
    flatten,
    is_number,
    metric_name,
    model_name,
    run_name,
    run_tags,
    trial_number,
    trial_run_name,
)
from sentinel.runtime.tracking.pending import write_journal
from sentinel.runtime.tracking.store import (
    check_reachable,
    ensure_experiment,
    ensure_registered_model,
    follow_moved_project,
    local_store_dir,
    local_store_lock,
    mark_dead_runs_killed,
    tracking_uri,
)

log = logging.getLogger(__name__)

RUN_RECORD = "tracking.json"  # in the run folder: which MLflow run records it
# A rerun in a folder whose run finished records itself here, and replaces tracking.json only once it has
# finished too: a rerun that fails leaves the folder's record (and its MLflow run) as the finished run left it.
RERUN_RECORD = ".tracking-rerun.json"
MAX_DESCRIPTION_CHARS = 5000  # a run's note (mlflow.note.content) or a model version's description, shown whole
BATCH = 100  # MLflow takes at most 100 params or tags (1000 metrics) per log_batch call
# Logged as artefacts at the end of a run: everything in the run folder except Ray's trial folders (each
# trial's weights; the best one is kept in tune/best_trial/), Ultralytics' last.pt (a resume point) and the
# run folder's lock (sentinel.runtime.runs.RUN_LOCK), a rerun's own tracking record (RERUN_RECORD above), and
# from mode=predict the registered version it downloaded (in the registry already) and its annotated images or
# videos (as large as the input; they stay in the run folder).
SKIP_ARTIFACTS = (
    "ray_tune",
    "finetune/weights/last.pt",
    ".run.lock",
    ".tracking-rerun.json",
    "registered_model",
    "annotated",
)


class Tracker:
    """Logs nothing: `tracking=none`, and what stages talk to before a run starts."""

    active = False  # records something: a record worth the work of building (an MLflow model folder)
    run_id = ""
    incomplete = ""  # after `end`: why the MLflow run misses something ("" when it holds everything)
    detached = False  # after `end`: the tracking service records the run after train.py has exited

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: Path, folder: str = "") -> None: ...

    def log_run_folder(self, run_dir: Path) -> None: ...

    def log_trials(self, rows: list[dict[str, Any]], params: list[str], best_trial: str) -> None: ...

    def register_model(self, name: str, artifact: str, tags: Mapping[str, Any], description: str = "") -> None: ...

    def end(self, status: str) -> None: ...


class MlflowTracker(Tracker):
    """One MLflow run. A call that fails is one warning naming the store and the cause; logging stops for the
    run, but its end is still recorded (FINISHED, FAILED or KILLED), and tracking.json says it is incomplete."""

    active = True

    def __init__(self, client: Any, run_id: str, experiment_id: str, record: Path, uri: str = "") -> None:
        self.client, self.run_id, self.experiment_id, self.record = client, run_id, experiment_id, record
        self.uri = uri
        self.failed = False
        self.problem = ""  # the first failure, for tracking.json and the summary
        self.seconds = {"start": 0.0, "logging": 0.0}  # what tracking cost this run, kept in its RUN_RECORD
        self.calls = 0
        self.renamed: dict[str, str] = {}
        self.failures = 0

    def _call(self, what: str, function: Any, *args: Any, ending: bool = False, **kwargs: Any) -> Any:
        if self.failed and not ending:
            return None
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        except Exception as error:  # a tracker that went away must not end the training
            self.failures += 1
            cause = redact(str(error)).splitlines()[0][:300] if str(error) else type(error).__name__
            if not self.failed:
                self.problem = f"{what} failed in {redact(self.uri)}: {cause}"
                log.warning("tracking: %s; nothing more is logged for this run but its end", self.problem)
            else:
                log.warning("tracking: %s failed in %s: %s", what, redact(self.uri), cause)
            self.failed = True
            return None
        finally:
            self.seconds["logging"] += time.perf_counter() - started
            self.calls += 1

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self._call("reading params", lambda: self.client.get_run(self.run_id).data.params) or {}
        new = {self._name(k): redact(str(v))[:MAX_PARAM_CHARS] for k, v in params.items()}
        changed = sorted(k for k, v in new.items() if k in existing and existing[k] != v)
        if changed:  # a rerun in the same folder with other settings: MLflow keeps a param's first value
            log.warning("tracking: params already logged with other values, kept as they were: %s", changed)
        items = [Param(k, v) for k, v in new.items() if k not in existing]
        for chunk in _chunks(items, BATCH):
            self._call("logging params", self.client.log_batch, self.run_id, params=chunk)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(self._name(k), redact(str(v))[:MAX_PARAM_CHARS]) for k, v in tags.items() if v is not None]
        for chunk in _chunks(items, BATCH):
            self._call("setting tags", self.client.log_batch, self.run_id, tags=chunk)

    def log_metrics(
        self, metrics: Mapping[str, float], step: int | None = None, timestamp_ms: int | None = None
    ) -> None:
        from mlflow.entities import Metric

        now = timestamp_ms or int(time.time() * 1000)
        items = [Metric(self._name(k), as_float(v), now, step or 0) for k, v in metrics.items() if is_number(v)]
        for chunk in _chunks(items, 1000):
            self._call("logging metrics", self.client.log_batch, self.run_id, metrics=chunk)
        self._tag_renamed()

    def _name(self, name: str) -> str:
        safe = metric_name(name)
        if safe != name and "(" not in name:  # Ultralytics' `(B)` is dropped by convention, not recorded
            self.renamed.setdefault(safe, name)
        return safe

    def _tag_renamed(self) -> None:
        """Each name MLflow refused as it was, under the name it got: `sentinel.renamed.<name>` = the original."""
        from mlflow.entities import RunTag

        new, self.renamed = self.renamed, {}
        items = [RunTag(metric_name(f"sentinel.renamed.{safe}"), original) for safe, original in new.items()]
        for chunk in _chunks(items, BATCH):
            self._call("setting tags", self.client.log_batch, self.run_id, tags=chunk)

    def log_artifact(self, path: Path, folder: str = "") -> None:
        self._call(f"logging {path}", self.client.log_artifact, self.run_id, str(path), folder or None)

    def log_run_folder(self, run_dir: Path) -> None:
        """Every file of the run folder (reports, plots, configs, metrics, weights, exports) but SKIP_ARTIFACTS."""
        for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
            relative = path.relative_to(run_dir).as_posix()
            if any(relative == skip or relative.startswith(skip + "/") for skip in SKIP_ARTIFACTS):
                continue
            self.log_artifact(path, str(Path(relative).parent) if "/" in relative else "")

    def log_trials(self, rows: list[dict[str, Any]], params: list[str], best_trial: str) -> None:
        """One nested run per trial: sampled values, metrics per epoch (Ray's result.json), how it ended.

        Logged by the driver from what Ray Tune collected, so trials on any node of a cluster end up in
        the same tracking store as their search, with no tracking set-up on the workers.
        """
        from mlflow.entities import Metric, Param

        existing = self._call("reading trials", self._trial_runs) or {}
        for number, row in enumerate(rows, start=1):
            if row["trial"] in existing:  # a resumed search: logged by the earlier attempt
                continue
            ended = {"completed": "FINISHED", "stopped early": "FINISHED"}.get(row["ended"], "FAILED")
            tags = {
                "mlflow.parentRunId": self.run_id,
                "mlflow.runName": trial_run_name(trial_number(row["trial"], number), {p: row.get(p) for p in params}),
                "sentinel.trial": row["trial"],
                "sentinel.ended": "stopped by ASHA" if row["ended"] == "stopped early" else row["ended"],
                "sentinel.best_trial": str(row["trial"] == best_trial).lower(),
            }
            epochs = list(_trial_epochs(Path(row["path"])))
            started, finished = trial_times(epochs)  # when it ran, from Ray's results, not when it is logged
            run = self._call(
                "creating a trial run", self.client.create_run, self.experiment_id, start_time=started, tags=tags
            )
            if run is None:
                return
            metrics = [
                Metric(metric_name(k), float(v), int(epoch["timestamp"] * 1000), int(epoch["training_iteration"]))
                for epoch in epochs
                for k, v in epoch.items()
                if is_number(v) and (k.startswith(("metrics/", "val/", "train/")) or k == "epoch")
            ]
            values = [Param(p, redact(str(row.get(p)))) for p in params]
            for chunk in _chunks(metrics, 1000):
                self._call("logging a trial", self.client.log_batch, run.info.run_id, metrics=chunk)
            for chunk in _chunks(values, BATCH):
                self._call("logging a trial", self.client.log_batch, run.info.run_id, params=chunk)
            self._call("ending a trial run", self.client.set_terminated, run.info.run_id, ended, end_time=finished)
        self.set_tags({"sentinel.best_trial": best_trial})

    def _trial_runs(self) -> dict[str, str]:
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{self.run_id}'", max_results=10000
        )
        return {r.data.tags.get("sentinel.trial", ""): r.info.run_id for r in runs}

    def register_model(self, name: str, artifact: str, tags: Mapping[str, Any], description: str = "") -> None:
        """A new version of registered model `name` whose source is `artifact` (a path in this run's artefacts:
        the MLflow model folder with the weights and their card), described by `description` (the model card).
        The version takes the alias CHAMPION when it beats the version holding it on CHAMPION_METRIC."""
        run = self._call("reading the run", self.client.get_run, self.run_id)
        if run is None:
            return
        registered = model_name(name)  # model.output_name `det:v2.pt` → `det_v2`; the file name is a tag
        self._call("registering the model", ensure_registered_model, self.client, registered)
        version = self._call(
            "adding a model version",
            self.client.create_model_version,
            registered,
            f"{run.info.artifact_uri}/{artifact}",
            run_id=self.run_id,
            tags={k: redact(str(v)) for k, v in tags.items()},
            description=redact(description)[:MAX_DESCRIPTION_CHARS] or None,
        )
        if version is None:
            return
        log.info("tracking: weights registered as model %r version %s", registered, version.version)
        verdict = self._call("comparing with the champion", champion_verdict, self.client, registered, tags)
        if verdict is None:
            return
        takes, why = verdict
        if takes:
            self._call(
                "setting the champion alias",
                self.client.set_registered_model_alias,
                registered,
                CHAMPION,
                version.version,
            )
        note = f"\n\n## Registry\n\n{'Champion' if takes else 'Not the champion'}: {why}.\n"
        self._call(
            "describing the version",
            self.client.update_model_version,
            registered,
            version.version,
            description=(redact(description)[: MAX_DESCRIPTION_CHARS - len(note)] + note),
        )
        log.info("tracking: model %r version %s: %s", registered, version.version, why)

    def end(self, status: str) -> None:
        self._tag_renamed()
        failures = self.failures
        self._call("ending the run", self.client.set_terminated, self.run_id, status, ending=True)
        ended = status if self.failures == failures else "not recorded"
        spent = {k: round(v, 3) for k, v in self.seconds.items()}
        log.info(
            "tracking: %.2f s in MLflow (start %.2f s, %d logging calls %.2f s)",
            sum(spent.values()),
            spent["start"],
            self.calls,
            spent["logging"],
        )
        try:  # a figure for benchmarks/, never a reason to fail a finished run
            record = {**read_json(self.record, "the tracking record"), "seconds": spent, "status": ended}
            if self.problem:
                record["incomplete"] = self.problem
            write_json_atomic(self.record, record)
            if self.record.name == RERUN_RECORD and status == "FINISHED":  # the folder's record is now this run's
                os.replace(self.record, self.record.with_name(RUN_RECORD))
        except (SentinelError, OSError) as error:
            log.warning("tracking: could not add the time spent to %s: %s", self.record, error)


def start_tracking(cfg: SentinelConfig, run_dir: Path, launch_dir: Path, record: str = RUN_RECORD) -> Tracker:
    """Start this run's tracking service, which opens (or continues) its MLflow run; a tracking server that
    does not answer is a ConfigError here, before any work. The pipeline hands the tracker to each stage
    (as Ultralytics hands its integrations to the trainer); `Tracker()` logs nothing (tracking=none)."""
    if plain(cfg.tracking.backend) == "none":
        return Tracker()
    store_dir = local_store_dir(launch_dir, cfg.paths.tracking)
    uri = tracking_uri(cfg.tracking.uri, store_dir)
    check_reachable(uri, cfg.tracking.timeout_s)
    spec = RunSpec(
        uri=uri,
        timeout_s=float(cfg.tracking.timeout_s),
        experiment=experiment_name(cfg),
        launch_dir=str(launch_dir),
        store_dir=str(store_dir),
        run_dir=str(run_dir),
        run_name=run_name(cfg),
        tags=run_tags(cfg, run_dir, launch_dir),
        params=flatten(plain(cfg)),  # `all`, not `Mode.all`
        pid=os.getpid(),
        log_file=_log_file(),
        record=record,
    )
    return ServiceTracker.start(spec, run_dir / record, wait=bool(cfg.tracking.wait))


@dataclass(frozen=True)
class RunSpec:
    """What the tracking service needs to open the run: plain values, computed in train.py's process
    (where Hydra's config and choices are)."""

    uri: str
    timeout_s: float
    experiment: str
    launch_dir: str
    store_dir: str  # where the local store (tracking.uri "") is: paths.tracking under the launch folder
    run_dir: str
    run_name: str
    tags: dict[str, Any]
    params: dict[str, str]
    pid: int  # train.py's process: the run is its, and a dead one is KILLED (mark_dead_runs_killed)
    log_file: str  # the run's log file, which the service writes to as well ("" when there is none)
    record: str = RUN_RECORD  # where in the run folder the service records the run (RERUN_RECORD: see there)


def open_mlflow_run(spec: RunSpec) -> MlflowTracker:
    """In the tracking service: open the store, the experiment and the run (continued when the run folder's
    tracking.json names one in the same store), and log the run's tags and params."""
    started = time.perf_counter()
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # MLflow's default backs off for minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(spec.timeout_s)))
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its database set-up lines are not for the console
    uri, run_dir = spec.uri, Path(spec.run_dir)
    with local_store_lock(uri, spec.timeout_s):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # opens (and may create) the store
        experiment_id = ensure_experiment(client, spec.experiment, uri, Path(spec.store_dir))
        if uri == tracking_uri("", Path(spec.store_dir)):
            follow_moved_project(Path(uri.removeprefix("sqlite:///")), Path(spec.store_dir))
    mark_dead_runs_killed(client, experiment_id, spec.pid)
    run_id = previous_run_id(run_dir, uri, client)
    if run_id:
        client.update_run(run_id, status="RUNNING")
        log.info("tracking: continuing MLflow run %s", run_id)
    else:
        run_id = client.create_run(experiment_id, run_name=spec.run_name).info.run_id
    record = run_dir / spec.record
    write_json_atomic(record, {"uri": redact(uri), "experiment_id": experiment_id, "run_id": run_id})
    tracker = MlflowTracker(client, run_id, experiment_id, record, uri)
    tracker.set_tags(spec.tags)
    tracker.log_params(spec.params)
    tracker.seconds["start"] = time.perf_counter() - started - tracker.seconds["logging"]
    log.info("tracking: MLflow run %s in %s", run_id, redact(uri))
    return tracker


class ServiceTracker(Tracker):
    """The tracker in train.py's process: each call goes, in order, to the run's tracking service
    (`python -m sentinel.runtime.tracking.service`), which does the MLflow work beside the training.

    Why a process of its own: importing MLflow and opening its store cost ~2.5 s of CPU (profiled: MLflow's
    package import ~1.5 s, its SQLAlchemy store ~0.5 s) and a thread would hold the same interpreter; the
    service does it on another core while train.py works, and a slow tracking server delays no epoch. At the
    end, train.py waits for a service that is ready (its run open: any run longer than a few seconds), so it
    can print the run and any problem; one still starting gets the calls as a journal (pending.py) and
    finishes after train.py has exited, so a short command stays short. A service that dies is a warning
    and tracking stops, like a failed call.
    """

    active = True

    def __init__(
        self, process: subprocess.Popen[bytes], record: Path, spec: RunSpec, ready_fd: int, wait: bool
    ) -> None:
        self.process, self.record, self.store_dir, self.wait = process, record, Path(spec.store_dir), wait
        self.wait_s = max(120.0, 20 * spec.timeout_s)
        self.ready_fd = ready_fd  # the service writes one byte once its run is open; EOF: it gave up
        self.sent: list[Any] = []  # every message, for the journal
        self.failed = False
        self.detached = False

    @classmethod
    def start(cls, spec: RunSpec, record: Path, wait: bool = False) -> ServiceTracker:
        ready_read, ready_write = os.pipe()
        process = subprocess.Popen(
            [sys.executable, "-m", "sentinel.runtime.tracking.service", str(ready_write)],
            stdin=subprocess.PIPE,
            pass_fds=(ready_write,),
            start_new_session=True,  # Ctrl-C reaches train.py, which ends the run as KILLED through the service
        )
        os.close(ready_write)
        tracker = cls(process, record, spec, ready_read, wait)
        tracker._send(spec)
        return tracker

    def _send(self, message: Any) -> None:
        """The RunSpec first, then (method, args, kwargs) per call, pickled in order."""
        if self.failed:
            return
        self.sent.append(message)
        try:
            pickle.dump(message, self.process.stdin)
            self.process.stdin.flush()  # type: ignore[union-attr]
        except (OSError, ValueError, pickle.PicklingError) as error:
            self.failed = True
            log.warning("tracking: the tracking service stopped, nothing more is logged for this run (%s)", error)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._send(("log_params", (dict(params),), {}))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._send(("set_tags", (dict(tags),), {}))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._send(("log_metrics", (dict(metrics), step), {"timestamp_ms": int(time.time() * 1000)}))

    def log_artifact(self, path: Path, folder: str = "") -> None:
        self._send(("log_artifact", (path, folder), {}))

    def log_run_folder(self, run_dir: Path) -> None:
        self._send(("log_run_folder", (run_dir,), {}))

    def log_trials(self, rows: list[dict[str, Any]], params: list[str], best_trial: str) -> None:
        self._send(("log_trials", (rows, params, best_trial), {}))

    def register_model(self, name: str, artifact: str, tags: Mapping[str, Any], description: str = "") -> None:
        self._send(("register_model", (name, artifact, dict(tags), description), {}))

    def end(self, status: str) -> None:
        """Hand the service its last call: wait for it if it is ready (or gave up), else leave it a journal."""
        started = time.perf_counter()
        if not (self.wait or self.failed or self._service_answered()) and self._detach(status):
            return
        self._send(("end", (status,), {}))
        with contextlib.suppress(OSError):
            self.process.stdin.close()  # type: ignore[union-attr]
        try:
            self.process.wait(timeout=self.wait_s)
        except subprocess.TimeoutExpired:
            log.warning("tracking: the tracking service did not finish within %g s; stopped", self.wait_s)
            self.process.kill()
            self.process.wait()
        os.close(self.ready_fd)
        if self.process.returncode != 0 and not self.failed:
            self.failed = True
            log.warning(
                "tracking: the tracking service stopped (exit %s); the MLflow run may miss what came after",
                self.process.returncode,
            )
        self._read_record(status, waited=time.perf_counter() - started)

    def _service_answered(self) -> bool:
        """Whether the service has opened its run, or given up (EOF), without waiting."""
        readable, _, _ = select.select([self.ready_fd], [], [], 0)
        return bool(readable)

    def _detach(self, status: str) -> bool:
        """The service is still starting: write what it was sent to a journal (synced: a machine that stops
        now loses nothing), tell it the journal is its, send the end, and let it finish on its own. False
        when no journal could be written: then train.py waits, as for a ready service."""
        try:
            journal = write_journal(self.store_dir, self.process.pid, [*self.sent, ("end", (status,), {})])
        except OSError as error:
            log.warning("tracking: no journal in %s (%s); waiting for the tracking service", self.store_dir, error)
            return False
        self._send(("adopt_journal", (str(journal),), {}))
        self._send(("end", (status,), {}))
        with contextlib.suppress(OSError):
            self.process.stdin.close()  # type: ignore[union-attr]
        os.close(self.ready_fd)
        self.detached = True
        log.info("tracking: the tracking service records the run after train.py ends (journal %s)", journal)
        return True

    def _read_record(self, status: str, waited: float) -> None:
        """The run's id and whether anything was not recorded, from the run folder's record."""
        path = self.record
        if path.name == RERUN_RECORD and status == "FINISHED":  # the service made it the folder's record
            path = path.with_name(RUN_RECORD)
        try:
            record = read_json(path, "the tracking record") if path.is_file() else {}
        except SentinelError as error:
            log.warning("tracking: %s", error)
            record = {}
        self.run_id = str(record.get("run_id", ""))
        self.incomplete = str(record.get("incomplete", ""))
        if self.failed and not self.incomplete:
            self.incomplete = "the tracking service stopped before the run's end (see train.log)"
        if record.get("status") != status and self.run_id:
            self.incomplete = self.incomplete or f"its end ({status}) could not be recorded"
        if record:
            seconds = {**record.get("seconds", {}), "train_py_waited": round(waited, 3)}
            with contextlib.suppress(OSError):
                write_json_atomic(path, {**record, "seconds": seconds})


CHAMPION = "champion"  # the registered model's alias for its best version: models:/<name>@champion
CHAMPION_METRIC = "test.map50-95"  # a version tag (higher is better), set when the run evaluated its weights


def champion_verdict(client: Any, registered: str, tags: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a new version with these tags takes the alias from the version holding it, and why (in words)."""
    from mlflow.exceptions import MlflowException

    score = _score(tags.get(CHAMPION_METRIC))
    try:
        holder = client.get_model_version_by_alias(registered, CHAMPION)
    except MlflowException:  # no version holds it yet
        holder = None
    if score is None:
        return False, f"no {CHAMPION_METRIC} (the run did not evaluate these weights), so it cannot be compared"
    if holder is None:
        return True, f"the first version with a {CHAMPION_METRIC} ({score:.4f}) takes the alias `{CHAMPION}`"
    held = _score(holder.tags.get(CHAMPION_METRIC))
    if held is None or score > held:
        before = "none" if held is None else f"{held:.4f}"
        return (
            True,
            f"{CHAMPION_METRIC} {score:.4f} beats version {holder.version}'s {before}: alias `{CHAMPION}` moved here",
        )
    return (
        False,
        f"{CHAMPION_METRIC} {score:.4f} does not beat version {holder.version}'s {held:.4f}, which keeps `{CHAMPION}`",
    )


def _score(value: Any) -> float | None:
    """A score as given (a number) or as MLflow keeps a tag (its text); None when absent."""
    try:
        return as_float(float(str(value))) if value is not None else None
    except ValueError:
        return None


def _log_file() -> str:
    """The run's log file (Hydra's file handler), which the tracking service appends to as well."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return str(handler.baseFilename)
    return ""


def link_resumed_run(tracker: Tracker, stage: str, folder: Path) -> None:
    """A stage resumed from an earlier run folder: tag this run with that folder and its MLflow run."""
    record = folder / RUN_RECORD
    earlier = str(read_json(record, "tracking record").get("run_id", "")) if record.is_file() else ""
    tracker.set_tags({f"sentinel.{stage}_resumed_from": str(folder), "sentinel.continues": earlier or None})


def _trial_epochs(trial_dir: Path) -> Iterator[dict[str, Any]]:
    result = trial_dir / "result.json"
    if not result.is_file():
        return
    for line in result.read_text().splitlines():
        if line.strip():
            yield json.loads(line)


def trial_times(epochs: list[dict[str, Any]]) -> tuple[int | None, int | None]:
    """A trial's start and end in ms, from Ray's per-epoch results (the first epoch's end less its duration);
    None (now, MLflow's default) for a trial that reported nothing."""
    if not epochs:
        return None, None
    first, last = epochs[0], epochs[-1]
    started = float(first.get("timestamp", 0)) - float(first.get("time_this_iter_s", 0) or 0)
    return int(started * 1000), int(float(last.get("timestamp", 0)) * 1000)


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def previous_run_id(run_dir: Path, uri: str, client: Any) -> str:
    """The MLflow run that already records this run folder on the same store, if any."""
    record = run_dir / RUN_RECORD
    if not record.is_file():
        return ""
    data = read_json(record, "tracking record")
    if data.get("uri") != redact(uri):
        return ""
    try:
        run = client.get_run(data["run_id"])
    except Exception:
        return ""
    if run.info.status == "FINISHED":  # a finished run's record is never reopened: a rerun is a run of its own
        return ""
    return str(data["run_id"])
