"""The tracking service: `python -m sentinel.runtime.tracking.service`, started by runtime.tracking for each run.

It reads, from stdin, the run's RunSpec and then the tracker calls train.py makes, in order (pickled), and
does them on MLflow with client.MlflowTracker. It ends after `end`; if stdin closes without one,
train.py went away (killed), and the run is marked KILLED here. Ctrl-C is train.py's to handle: the service
runs in a session of its own and also ignores SIGINT.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import sys
from pathlib import Path
from typing import Any

from sentinel.runtime.faults import hold_point, kill_point
from sentinel.runtime.redaction import install_redaction
from sentinel.runtime.tracking.client import MlflowTracker, RunSpec, open_mlflow_run
from sentinel.runtime.tracking.pending import replay_orphans, wait_for_live_services

log = logging.getLogger("sentinel.runtime.tracking")
FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's, as in train.py's own log lines


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    yield_cpu_to_training()
    ready_fd = int(sys.argv[1]) if len(sys.argv) > 1 else -1
    stdin = sys.stdin.buffer
    try:
        spec: RunSpec = pickle.load(stdin)
    except EOFError:  # train.py ended before it sent the run
        return 1
    set_up_logging(spec.log_file)
    try:
        tracker = open_mlflow_run(spec)
    except Exception as error:  # tracking must never end the training: one warning, then nothing is logged
        close_fd(ready_fd)  # train.py now waits for this process, and says the run is not tracked
        log.warning("tracking: could not open the MLflow run, nothing is logged for this run: %s", error)
        log.debug("tracking: opening the run failed", exc_info=True)
        drop_adopted_journal(stdin)
        return 1
    kill_point("tracking.opened")
    hold_point("tracking.ready")
    signal_ready(ready_fd)
    replay_orphans(Path(spec.store_dir), replay)  # runs whose service stopped before it recorded them
    return serve(tracker, stdin)


def yield_cpu_to_training() -> None:
    """Queue behind the training for the CPU: importing MLflow and opening its store take ~3 s of CPU, which on
    a machine the training keeps busy would otherwise come out of the training's time; the logging after that
    is a few ms per epoch, and train.py waits for what is left only at the end."""
    with contextlib.suppress(OSError):
        os.nice(10)


def signal_ready(fd: int) -> None:
    """Tell train.py the run is open: from now on, train.py waits for this service at its end."""
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.write(fd, b"1")
        close_fd(fd)


def close_fd(fd: int) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


def serve(tracker: MlflowTracker, stdin: Any) -> int:
    """Do each call as it comes; a call that fails is the tracker's warning, and tracking stops for the run.
    A journal handed over at the end (train.py did not wait) is deleted once the run's end is recorded."""
    journal = ""
    while True:
        try:
            method, args, kwargs = pickle.load(stdin)
        except EOFError:
            log.warning("tracking: train.py ended without ending its MLflow run; marked KILLED")
            tracker.end("KILLED")
            return 0
        if method == "adopt_journal":
            journal = args[0]
            continue
        apply(tracker, method, args, kwargs)
        if method == "end":
            if journal:
                say_what_was_not_tracked(tracker)
                Path(journal).unlink(missing_ok=True)
            return 0


def apply(tracker: MlflowTracker, method: str, args: Any, kwargs: Any) -> None:
    try:
        getattr(tracker, method)(*args, **kwargs)
    except Exception as error:  # our own code around MLflow's calls (those warn and stop by themselves)
        log.warning("tracking: %s failed: %s", method, error)
        log.debug("tracking: %s failed", method, exc_info=True)


def replay(messages: list[Any]) -> None:
    """Record a journal's run: open (or continue) it, do its calls, end it (KILLED if the journal has no end)."""
    spec, calls = messages[0], messages[1:]
    try:
        tracker = open_mlflow_run(spec)
    except Exception as error:
        log.warning("tracking: could not record the run of %s from its journal: %s", spec.run_dir, error)
        return
    for method, args, kwargs in calls:
        apply(tracker, method, args, kwargs)
    if not any(method == "end" for method, _, _ in calls):
        tracker.end("KILLED")


def settle_pending_runs(store_dir: Path, timeout_s: float) -> None:
    """Before a store is read: wait for runs still being recorded after their train.py ended, and record
    those whose tracking service stopped first (pending.py)."""
    left = wait_for_live_services(store_dir, max(60.0, timeout_s))
    if left:
        log.warning("tracking: %d run(s) still being recorded in %s; not waiting longer", len(left), store_dir)
    replay_orphans(store_dir, replay)


def say_what_was_not_tracked(tracker: MlflowTracker) -> None:
    """train.py has exited and could not say it: a run that misses something says so on the console."""
    if tracker.problem:
        log.warning("tracking: MLflow run %s not fully tracked: %s", tracker.run_id, tracker.problem)


def drop_adopted_journal(stdin: Any) -> None:
    """The run cannot be opened: read what train.py still sends (it ends the stream at its end); a journal
    handed over is deleted, as nothing in it can be recorded — the warning above said so."""
    while True:
        try:
            method, args, _ = pickle.load(stdin)
        except (EOFError, pickle.UnpicklingError, OSError):
            return
        if method == "adopt_journal":
            Path(args[0]).unlink(missing_ok=True)
            log.warning("tracking: not fully tracked: the MLflow run could not be opened (see above)")


def set_up_logging(log_file: str) -> None:
    """INFO and above to the run's log file, warnings also to the console (train.py's summary says where the
    run is; and a service that finishes after train.py has exited must not talk over the next command),
    secrets masked, like train.py's own lines."""
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(logging.WARNING)
    handlers: list[logging.Handler] = [console]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.INFO, format=FORMAT, handlers=handlers)
    install_redaction()


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    # Every MLflow call above is synchronous and committed: skip tearing down MLflow's and SQLAlchemy's
    # modules at exit (~0.1-0.2 s that train.py would wait for at the end of every run).
    os._exit(code)
