"""Runs recorded after train.py has gone, and the journal that makes that safe.

A short command (a cached prep, a doctor, a small evaluate) ends before its tracking service has even
imported MLflow (~2.5 s of CPU): waiting for it made such commands four times slower (issue 32). So when the
service is not ready at the end, train.py writes every call it sent to a journal in the store's folder,
`<paths.tracking>/pending/<service pid>-<id>.journal`, synced to disk, hands it to the service and exits;
the service records the run and deletes the journal. If the machine stops first, the journal is still
there: the next tracked command's service (after its own run is open, in the background) or `mode=compare`
(before it reads the store) replays it. A journal is an orphan once its service's process is gone; a file
lock keeps two replays apart. Replaying is safe to repeat: the run is continued (tracking.json names it),
MLflow keeps one copy of a metric logged twice at the same step and time, params and tags are the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pickle
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sentinel.runtime.tracking.store import process_alive

log = logging.getLogger("sentinel.runtime.tracking")
PENDING_DIR = "pending"  # under the local store's folder (paths.tracking)
SUFFIX = ".journal"


def write_journal(store_dir: Path, service_pid: int, messages: list[Any]) -> Path:
    """The RunSpec and every call, pickled, written to a temporary name, synced and renamed into place: a
    journal is whole or absent, and it survives a power cut that follows train.py's exit."""
    folder = store_dir / PENDING_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{service_pid}-{uuid.uuid4().hex[:12]}{SUFFIX}"
    tmp = folder / f".{path.name}.tmp"
    with open(tmp, "wb") as handle:
        pickle.dump(messages, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


def read_journal(path: Path) -> list[Any]:
    with open(path, "rb") as handle:
        return pickle.load(handle)


def service_pid(path: Path) -> int:
    head = path.name.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def journals(store_dir: Path) -> list[Path]:
    folder = store_dir / PENDING_DIR
    return sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []


@contextlib.contextmanager
def held(path: Path) -> Iterator[bool]:
    """Hold the journal's lock (without waiting) while it is worked on: True when this process has it and the
    journal is still there (not already done by whoever held it before)."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; opening is what may fail
    except FileNotFoundError:
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield os.fstat(handle.fileno()).st_nlink > 0


def replay_orphans(store_dir: Path, replay: Any) -> int:
    """Replay each journal whose service is gone with `replay(messages)`, then delete it. Returns how many."""
    done = 0
    for path in journals(store_dir):
        if process_alive(service_pid(path)):
            continue
        with held(path) as mine:
            if not mine:
                continue
            try:
                messages = read_journal(path)
            except (OSError, EOFError, pickle.UnpicklingError) as error:
                log.warning("tracking: %s cannot be read (%s); left for you to look at", path, error)
                continue
            log.info("tracking: recording a run whose tracking service stopped first (%s)", path.name)
            replay(messages)
            path.unlink(missing_ok=True)
            done += 1
    return done


def in_hand(path: Path) -> bool:
    """A journal its service is still working on, or that another process is replaying."""
    if process_alive(service_pid(path)):
        return True
    with held(path) as mine:
        return not mine and path.exists()


def wait_for_live_services(store_dir: Path, timeout_s: float) -> list[Path]:
    """Wait until every journal in hand is done (its service or replayer deletes it); returns those still
    pending after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        live = [path for path in journals(store_dir) if in_hand(path)]
        if not live or time.monotonic() > deadline:
            return live
        time.sleep(0.1)
