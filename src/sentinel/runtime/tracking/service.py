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
from typing import Any

from sentinel.runtime.faults import kill_point
from sentinel.runtime.redaction import install_redaction
from sentinel.runtime.tracking.client import MlflowTracker, RunSpec, open_mlflow_run

log = logging.getLogger("sentinel.runtime.tracking")
FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's, as in train.py's own log lines


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    yield_cpu_to_training()
    stdin = sys.stdin.buffer
    try:
        spec: RunSpec = pickle.load(stdin)
    except EOFError:  # train.py ended before it sent the run
        return 1
    set_up_logging(spec.log_file)
    try:
        tracker = open_mlflow_run(spec)
    except Exception as error:  # tracking must never end the training: one warning, then nothing is logged
        log.warning("tracking: could not open the MLflow run, nothing is logged for this run: %s", error)
        log.debug("tracking: opening the run failed", exc_info=True)
        return 1
    kill_point("tracking.opened")
    return serve(tracker, stdin)


def yield_cpu_to_training() -> None:
    """Queue behind the training for the CPU: importing MLflow and opening its store take ~3 s of CPU, which on
    a machine the training keeps busy would otherwise come out of the training's time; the logging after that
    is a few ms per epoch, and train.py waits for what is left only at the end."""
    with contextlib.suppress(OSError):
        os.nice(10)


def serve(tracker: MlflowTracker, stdin: Any) -> int:
    """Do each call as it comes; a call that fails is the tracker's warning, and tracking stops for the run."""
    while True:
        try:
            method, args, kwargs = pickle.load(stdin)
        except EOFError:
            log.warning("tracking: train.py ended without ending its MLflow run; marked KILLED")
            tracker.end("KILLED")
            return 0
        try:
            getattr(tracker, method)(*args, **kwargs)
        except Exception as error:  # our own code around MLflow's calls (those warn and stop by themselves)
            log.warning("tracking: %s failed: %s", method, error)
            log.debug("tracking: %s failed", method, exc_info=True)
        if method == "end":
            return 0


def set_up_logging(log_file: str) -> None:
    """INFO and above to the console and to the run's log file, secrets masked, like train.py's own lines."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
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
