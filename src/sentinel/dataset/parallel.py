"""How a merge runs the per-image rule (rule.py) over many images: batches in a thread pool or in worker
processes from a forkserver, workers that end when their build process dies, and the cyclic garbage collector
paused while a merge holds its per-image objects."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sentinel.config.plain import plain
from sentinel.config.schema import MergeConfig
from sentinel.dataset.classes import ClassMap
from sentinel.dataset.file_records import FileRecords, Learnt, file_key
from sentinel.dataset.items import Item, Kept
from sentinel.dataset.rule import BuildFolders, Tally, process_batch
from sentinel.errors import SentinelError
from sentinel.runtime.eta import ProgressLines
from sentinel.runtime.faults import kill_point

log = logging.getLogger(__name__)


BATCH = 64  # images per batch: the unit of progress, of the kill points, and of what a worker sends back


# Batches per message to and from a worker process. Each message costs the build process (which has no core
# of its own on a 2-core machine) a round of unpickling; 4 took its CPU in the parallel pass from 0.25 to 0.19 s
# at 20k images.
BATCHES_PER_MESSAGE = 4


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off during a merge, then on again if it was on before.

    A merge keeps some ten objects per image alive until it ends (the plan, the results, the per-file record)
    and frees almost none, which is the worst case for the collector: each collection it triggers walks
    everything still alive, and it triggers them all the way through the build. At 20k images that was 0.5 s
    of a 3 s first build and 0.4 s of a 2.1 s rebuild (tmpfs, so the disk does not hide it). The per-image
    objects form no reference cycle, so reference counting frees those a merge drops; the few cycles made
    elsewhere (the report's figures, a caught exception) wait for the collector's next run after the merge.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def process_all(
    items: list[Item],
    class_map: ClassMap,
    merge: MergeConfig,
    folders: BuildFolders,
    tally: Tally,
    records: FileRecords,
) -> list[Kept]:
    """Run process_batch over all items: in worker processes for a large build, else in a thread pool.

    Threads share the GIL, and on a 2-core machine four threads checking 20k small images took as long as one
    (benchmarks/prep.py; most of the per-image work is Python). Processes run it in parallel; starting them
    costs about a second, so small builds stay in threads. Worker processes come from a forkserver (a fork
    of a process with threads can copy a lock another thread holds), which, as Python's spawn does, imports
    the main script again: a script calling Sentinel must keep its work under `if __name__ == "__main__":`.
    The workers read the merge options from a plain namespace, whatever form they came in: an OmegaConf
    node (as tests and library callers may pass) validates its key on each attribute access (a tenth of a
    rebuild at 20k).
    """
    from tqdm import tqdm

    options = SimpleNamespace(**plain(merge))
    batches = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
    kept: list[Kept] = []
    to_read = sum(1 for item in items if file_key(item.image_stat) not in records.images)
    pool, run_batch = _pool_for(to_read, merge.workers, class_map, options, folders, records)
    try:
        results = pool.map(run_batch, batches, chunksize=BATCHES_PER_MESSAGE)  # a thread pool ignores it
        with tqdm(total=len(items), desc="prep: merging", unit="img", mininterval=1.0, disable=None) as bar:
            lines = ProgressLines(log, "prep: images merged", len(items))  # where the bar is off (no terminal)
            for batch, (batch_kept, batch_tally, learnt) in zip(batches, results, strict=True):
                kept.extend(batch_kept)
                tally.add(batch_tally)
                if learnt is not None:
                    records.add_learnt(learnt)
                bar.update(len(batch))
                if bar.disable:
                    lines.update(len(batch))
                kill_point("merge.batch")
    except BrokenProcessPool:
        raise SentinelError(
            "prep: a worker process of the merge died before finishing its images (killed, out of memory, or "
            "a script that calls Sentinel without `if __name__ == '__main__':`, which worker processes import "
            "again). Fix: guard the script's main code, or set merge.workers=1 to merge in this process"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on error, stop before the temporary folder is removed
    return kept


BatchResult = tuple[list[Kept], Tally, Learnt | None]  # a batch's kept images, counts, and what a worker learnt


def _pool_for(
    to_read: int,
    workers: int,
    class_map: ClassMap,
    options: SimpleNamespace,
    folders: BuildFolders,
    records: FileRecords,
) -> tuple[Executor, Callable[[list[Item]], BatchResult]]:
    """The pool that checks this build's images, and the function it maps over batches.

    Processes pay off for images that must be read and decoded (`to_read`, not found in the per-file
    record); a rebuild that only changes merge options reads none, and there starting processes, each
    loading the record, and sending every result back cost more than the parallel pass saves. Such a build
    only makes links and formats lines, in one thread: links into one folder queue on the folder's lock and
    the rest holds the GIL, so more threads were slower (20k images: 4.1 s in one thread, 4.4 s in two,
    4.8 s in four, medians of 3). A worker process loads the record itself and sends back what it learnt;
    a thread shares `records`.
    """
    processes = min(workers, os.cpu_count() or 1)
    if processes > 1 and to_read >= PROCESS_POOL_MIN_ITEMS:
        pool = ProcessPoolExecutor(
            processes,
            mp_context=_forkserver_context(),
            initializer=_start_worker,
            initargs=(class_map, options, folders, records.path),
        )
        return pool, _process_batch_in_worker

    def in_thread(batch: list[Item]) -> BatchResult:
        return (*process_batch(batch, class_map, options, folders, records), None)

    return ThreadPoolExecutor(max_workers=workers if to_read else 1), in_thread


def _forkserver_context() -> multiprocessing.context.BaseContext:
    """Worker processes forked from a server process that has imported what they run, once.

    Not plain fork: a fork of a process with threads can copy a lock another thread holds. The server
    imports the main script (as it does by default, so workers need not), this module and the decoder
    (0.2 s a worker otherwise) before its first fork and lives as long as this process, so every later
    merge's workers start with them loaded. Asked for before the server starts; once it runs, it keeps
    what it has.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", __name__, "cv2", "numpy"])
    return context


PROCESS_POOL_MIN_ITEMS = 4000  # images to read: below this, starting worker processes costs more than they save


_WORKER: dict[str, Any] = {}  # a worker process's share of the build, set once by _start_worker


def _start_worker(class_map: ClassMap, options: SimpleNamespace, folders: BuildFolders, records_path: Path) -> None:
    """A worker process's set-up: what every batch needs, and the per-file record read from disk once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the pool
    threading.Thread(target=_exit_when_orphaned, daemon=True, name="sentinel-orphan-watch").start()
    _WORKER.update(class_map=class_map, options=options, folders=folders, records=FileRecords.load_file(records_path))


def _exit_when_orphaned(interval_s: float = 0.5) -> None:
    """End this worker once the build process is gone (killed): a pool worker would otherwise wait forever.

    concurrent.futures' workers wait on a queue whose pipe every worker also holds, so they never see EOF,
    and they keep the forkserver alive too. multiprocessing's parent sentinel (a pipe only the build process
    writes) does close when that process dies, even before it is reaped.
    """
    parent = multiprocessing.parent_process()
    while parent is not None and parent.is_alive():
        time.sleep(interval_s)
    os._exit(1)


def _process_batch_in_worker(items: list[Item]) -> tuple[list[Kept], Tally, Learnt]:
    """process_batch in a worker process; what it learnt for the record goes back with the results."""
    w = _WORKER
    kept, tally = process_batch(items, w["class_map"], w["options"], w["folders"], w["records"])
    return kept, tally, w["records"].take_learnt()
