"""Build folders so that a kill at any moment leaves the old result or the new one, never half.

A build happens in a hidden temporary sibling and is renamed into place (atomic on one filesystem) only
after a completion marker is written. A file lock per target keeps two runs from building it at once;
the holder of the lock also sweeps temporaries left by killed runs.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from sentinel.runtime.faults import kill_point

COMPLETE_MARKER = ".sentinel-complete.json"


def is_complete(folder: Path) -> bool:
    """True for a folder that a finished build renamed into place."""
    return (folder / COMPLETE_MARKER).is_file()


@contextmanager
def target_lock(final: Path, timeout_s: float = 3600.0) -> Iterator[None]:
    """Hold an exclusive lock for building `final`; other processes wait here, then see the result."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final.parent / f".{final.name}.lock"), timeout=timeout_s):
        yield


@contextmanager
def atomic_build(final: Path, marker: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success mark it complete and rename it to `final`.

    Call inside `target_lock(final)`. An existing `final` is replaced only after the new one is complete.
    """
    sweep_stale_temporaries(final)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker or {}, indent=2, sort_keys=True))
        _fsync_dir(tmp)
        kill_point("atomic.before_rename")
        if final.exists():
            old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sweep_stale_temporaries(final: Path) -> None:
    """Remove temporaries of `final` left by killed runs (safe: the caller holds the target's lock)."""
    for pattern in (f".tmp-{final.name}-*", f".old-{final.name}-*"):
        for stale in final.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
