"""Merge sources into one YOLO dataset, never touching them.

Output: data_dir/merged/<fingerprint>/ with images/<split>/ (links to the sources' files, named
`<source>__<path>` so equal file names cannot collide), labels/<split>/ in one class space (each written, or
a hard link to the file an earlier build wrote with the same bytes: sentinel.dataset.file_records),
a dataset.yaml with an absolute `path`, Ultralytics' label caches labels/<split>.cache (sentinel.dataset.ultra_cache:
the first training reads them instead of scanning every image again), with merge.balance=oversample a
train.txt listing rare classes' images more than once (sentinel.dataset.balance), and report/. The fingerprint hashes
the merge settings and every input file's path and stat, so an unchanged rerun is a cache hit that does no
work, and any change builds a new folder. Each build happens in a temporary folder that is renamed into
place when complete; since a folder's content never changes after the rename, its caches cannot be stale.

A build with other merge options over the same files (an incremental rebuild) reads none of them again:
each file's image check and label parse comes from the per-file record (sentinel.dataset.file_records).
"""

from __future__ import annotations

import gc
import hashlib
import logging
import multiprocessing
import os
import shutil
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from sentinel.dataset.balance import balance_section
from sentinel.dataset.classes import ClassMap, build_class_map
from sentinel.dataset.file_records import FileRecords, Learnt, WrittenLabel, file_key
from sentinel.dataset.images import check_image, with_extension_check
from sentinel.dataset.items import Checked, Item, Kept
from sentinel.dataset.labels import format_box, parse_label_file
from sentinel.dataset.report import write_report
from sentinel.dataset.sources.yolo_dir import (
    SPLITS,
    SourceData,
    label_path_for,
    scan_images,
    scan_label_files,
    stat_or_none,
)
from sentinel.dataset.ultra_cache import write_label_caches
from sentinel.errors import SentinelError
from sentinel.runtime.atomic import atomic_build, is_complete, target_lock
from sentinel.runtime.faults import kill_point
from sentinel.runtime.fingerprint import stable_hash

log = logging.getLogger(__name__)

MERGE_VERSION = 4  # bump when the output format changes, so old caches are not reused
FINGERPRINT_KEYS = (
    "aliases",
    "include",
    "exclude",
    "classes",
    "on_bad_label",
    "keep_unlabeled_images",
    "drop_leaks",
    "link",
    "balance",
    "balance_target_ratio",
    "balance_warn_ratio",
)
BATCH = 64  # images per batch: the unit of progress, of the kill points, and of what a worker sends back
# Batches per message to and from a worker process. Each message costs the build process (which has no core
# of its own on a 2-core machine) a round of unpickling; 4 took its CPU in the parallel pass from 0.25 to 0.19 s
# at 20k images.
BATCHES_PER_MESSAGE = 4
READ_COUNTS = ("images_read", "images_from_record", "labels_read", "labels_from_record")


@dataclass
class Plan:
    items: list[Item]
    orphan_labels: dict[str, Counter[str]]  # source → split → label files with no image
    orphan_examples: list[str]
    missing_splits: dict[str, list[str]]
    # source → split → its folders (or list files) in data.yaml, there or not: an empty split names them
    split_paths: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    # (source, split) → images left out because another image of the same name shares their label file
    shared_labels: dict[tuple[str, str], list[str]] = field(default_factory=dict)


class PrepFailed(SentinelError):
    """No usable dataset came out of the merge; carries the report so that it is written all the same."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def where_split_was_looked_for(split: str, plan: Plan) -> list[str]:
    """Each source's `split` path(s), and what is wrong with each: not there, or no image in it."""
    found = []
    for source, by_split in sorted(plan.split_paths.items()):
        paths = by_split.get(split, [])
        if not paths:
            found.append(f"{source} gives no {split} split")
        for path in paths:
            found.append(f"{source}: {path} {'holds no images' if Path(path).exists() else 'does not exist'}")
    return found or [f"no selected dataset has a {split} split"]


def why_no_images(split: str, plan: Plan, report: dict[str, Any]) -> str:
    """Name the cause when a split ends up empty: no input at all, or the reasons its inputs were skipped."""
    inputs = sum(1 for item in plan.items if item.split == split)
    if inputs == 0:
        return (
            f"prep: no {split} images: {'; '.join(where_split_was_looked_for(split, plan))}. "
            f"Fix: check the `{split}:` path in their data.yaml"
        )
    reasons: Counter[str] = Counter()
    for by_split in report["skipped_images"].values():
        reasons.update(by_split.get(split, {}))
    detail = ", ".join(f"{reason} {count}" for reason, count in reasons.most_common())
    fix = "Fix: see prep_report.md in the run folder"
    if reasons and reasons.most_common(1)[0][0] == "leak_of_train_image":
        fix = f"Fix: give a {split} split with images not in train, or set merge.drop_leaks=false"
    return f"prep: all {inputs} {split} images were skipped ({detail}). {fix}"


@dataclass
class MergeResult:
    folder: Path
    dataset_yaml: Path
    fingerprint: str
    cache_hit: bool
    report: dict[str, Any] = field(default_factory=dict)


def merge_sources(sources: list[SourceData], merge: DictConfig, data_dir: Path) -> MergeResult:
    """Build (or find in cache) the merged dataset of `sources` under `data_dir/merged/`."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # A worker process of an earlier merge is importing an unguarded main script, which calls us again: it
        # would wait for that merge's lock forever. Fail instead; the parent then says what to do.
        raise SentinelError("prep: merge_sources called while a worker process starts (unguarded main script)")
    with cyclic_gc_paused():
        return _merge_sources(sources, merge, data_dir)


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


def _merge_sources(sources: list[SourceData], merge: DictConfig, data_dir: Path) -> MergeResult:
    class_map = build_class_map({s.name: s.names for s in sources}, merge)
    plan = plan_items(sources)
    fingerprint = merge_fingerprint(sources, plan, merge)
    final = data_dir / "merged" / fingerprint
    if is_complete(final):
        log.info("prep: cache hit, %s is up to date", final)
        return MergeResult(final, final / "dataset.yaml", fingerprint, True, _load_report(final))
    with target_lock(final):
        if is_complete(final):
            return MergeResult(final, final / "dataset.yaml", fingerprint, True, _load_report(final))
        check_disk_space(plan, merge.link, final.parent)
        records = FileRecords.load(data_dir)
        try:
            with atomic_build(final, {"fingerprint": fingerprint}) as tmp:
                report = build_merged(plan, class_map, merge, tmp, final, records)
        finally:  # also after a failed build: the rerun that follows a fix reads only the fixed files
            records.save()
    log.info("prep: built %s", final)
    return MergeResult(final, final / "dataset.yaml", fingerprint, False, report)


# --- disk space -----------------------------------------------------------------------------------------

BYTES_PER_ITEM = 8192  # a label file and a directory entry or link: one filesystem block each, rounded up
SAFETY_BYTES = 64 * 2**20


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def check_disk_space(plan: Plan, link: str, folder: Path) -> None:
    """Refuse before writing anything when the build would not fit (copies cost the images' bytes)."""
    need = len(plan.items) * BYTES_PER_ITEM + SAFETY_BYTES
    if link == "copy":
        need += sum(item.image_stat[0] for item in plan.items)
    folder.mkdir(parents=True, exist_ok=True)
    free = free_bytes(folder)
    if free < need:
        raise SentinelError(
            f"prep: the merged dataset needs about {need / 2**20:.0f} MiB in {folder} but only {free / 2**20:.0f} "
            "MiB are free. Fix: free some space, or set data_dir to a larger disk (merge.link=hardlink needs least)"
        )


# --- planning -------------------------------------------------------------------------------------------


def plan_items(sources: list[SourceData]) -> Plan:
    """List every image of every split with its label; find labels without images. Stats only, no reads."""
    items: list[Item] = []
    orphans: dict[str, Counter[str]] = defaultdict(Counter)
    orphan_examples: list[str] = []
    used_stems: set[tuple[str, str]] = set()
    shared: dict[tuple[str, str], list[str]] = defaultdict(list)
    for source in sources:
        prefix = f"{source.name}__"
        for split, entries in source.splits.items():
            for entry in entries:
                images = scan_images(entry)
                labels = (
                    scan_label_files(os.path.dirname(label_path_for(str(entry / "x.jpg")))) if entry.is_dir() else None
                )
                entry_items: list[Item] = []
                for image, rel, image_stat in images:
                    label = label_path_for(image)
                    label_stat = labels.pop(label, None) if labels is not None else stat_or_none(label)
                    dot = rel.rfind(".")
                    stem = _unique_stem(prefix + rel[:dot].replace("/", "__"), split, used_stems)
                    name = stem + rel[dot:].lower()
                    entry_items.append(
                        Item(source.name, split, image, label, label_stat, image_stat, stem, len(source.names), name)
                    )
                items += without_shared_labels(entry_items, shared)
                for orphan in sorted(labels or {}):
                    orphans[source.name][split] += 1
                    if len(orphan_examples) < 20:
                        orphan_examples.append(orphan)
    split_paths = {
        s.name: {
            split: [*map(str, s.splits.get(split, [])), *s.missing_paths.get(split, [])]
            for split in ("train", "val", "test")
        }
        for s in sources
    }
    missing = {s.name: s.missing_splits for s in sources}
    return Plan(items, dict(orphans), orphan_examples, missing, split_paths, dict(shared))


def without_shared_labels(items: list[Item], shared: dict[tuple[str, str], list[str]]) -> list[Item]:
    """Images whose label file another image of the same name claims too (`a.jpg`, `a.png` → `a.txt`) are left
    out, each recorded in `shared`: which of them the boxes belong to cannot be known, and giving them to one
    would make the other a background image, silently."""
    by_label: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_label[item.label].append(item)
    ambiguous = {label for label, claimants in by_label.items() if len(claimants) > 1}
    if not ambiguous:
        return items
    for item in items:
        if item.label in ambiguous:
            shared[(item.source, item.split)].append(item.image)
    return [item for item in items if item.label not in ambiguous]


def merge_fingerprint(sources: list[SourceData], plan: Plan, merge: DictConfig) -> str:
    """Hash of everything the output depends on: merge settings, class lists, every input file's stat."""
    settings = {k: OmegaConf.to_container(merge, resolve=True)[k] for k in FINGERPRINT_KEYS}
    files = hashlib.blake2b(digest_size=16)
    for i in plan.items:
        files.update(f"{i.source}\0{i.split}\0{i.image}\0{i.image_stat}\0{i.label_stat}\n".encode())
    return stable_hash(
        {
            "version": MERGE_VERSION,
            "settings": settings,
            "sources": [(s.name, s.names) for s in sources],
            "files": files.hexdigest(),
        }
    )


def _unique_stem(stem: str, split: str, used: set[tuple[str, str]]) -> str:
    """`<source>__<path>`; a suffix when two inputs would share a stem (a.jpg and a.png, or a list repeating)."""
    candidate, n = stem, 1
    while (split, candidate) in used:
        n += 1
        candidate = f"{stem}__{n}"
    used.add((split, candidate))
    return candidate


# --- building -------------------------------------------------------------------------------------------


TALLY_COUNTERS = (
    *("images", "boxes", "class_images", "skipped_images", "skipped_lines", "excluded_boxes"),
    *("notes", "reads"),
)


class Tally:
    """Counts for the report: everything kept, skipped or changed, by source, split and reason."""

    def __init__(self) -> None:
        self.images: Counter[tuple[str, str]] = Counter()
        self.boxes: Counter[tuple[str, str, str]] = Counter()
        self.class_images: Counter[tuple[str, str, str]] = Counter()
        self.skipped_images: Counter[tuple[str, str, str]] = Counter()
        self.skipped_lines: Counter[tuple[str, str, str]] = Counter()
        self.excluded_boxes: Counter[tuple[str, str, str]] = Counter()
        self.notes: Counter[tuple[str, str, str]] = Counter()
        self.reads: Counter[str] = Counter()  # READ_COUNTS, and label_files_written / label_files_linked
        self.examples: list[str] = []

    def example(self, text: str) -> None:
        if len(self.examples) < 50:
            self.examples.append(text)

    def add(self, other: Tally) -> None:
        """Fold a worker's tally into this one."""
        for name in TALLY_COUNTERS:
            getattr(self, name).update(getattr(other, name))
        for text in other.examples:
            self.example(text)


def build_merged(
    plan: Plan, class_map: ClassMap, merge: DictConfig, out: Path, final: Path, records: FileRecords
) -> dict[str, Any]:
    """Check and write every input into `out` (renamed to `final` later) in one parallel pass; drop leaks after.

    Each worker checks its images and labels, applies the label policy and class map, links the image and
    writes the label: file creation dominates on real disks and parallelises, so nothing waits for a
    global first pass. Leaks need every train hash, so leaked val/test files are removed afterwards, from
    the temporary folder nobody else sees.
    """
    tally = Tally()
    for (source, split), images in plan.shared_labels.items():
        tally.skipped_images[(source, split, "label_file_shared_by_two_images")] += len(images)
        for image in images[:5]:
            tally.example(f"{image}: another image of the same name shares its label file; both left out")
    for split in {item.split for item in plan.items}:
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
    kept = _process_all(plan.items, class_map, merge, BuildFolders(out, final), tally, records)
    duplicates, leaks = _find_duplicates(kept)
    if merge.drop_leaks:
        for k in leaks:
            tally.skipped_images[(k.item.source, k.item.split, "leak_of_train_image")] += 1
            (out / "images" / k.item.split / k.item.out_image_name).unlink()
            (out / "labels" / k.item.split / f"{k.item.out_stem}.txt").unlink()
        leaked = {id(k) for k in leaks}
        kept = [k for k in kept if id(k) not in leaked]
    for k in kept:
        _count(k, class_map, tally)
    link_counts = Counter(k.placement for k in kept)
    copied_bytes = sum(k.image.size_bytes for k in kept if k.placement == "copy")
    report = _report(plan, class_map, tally, duplicates, leaks, link_counts, copied_bytes, merge, final)
    for split in ("train", "val"):
        if not any(k.item.split == split for k in kept):
            raise PrepFailed(why_no_images(split, plan, report), report)
    train = sorted((k for k in kept if k.item.split == "train"), key=lambda k: k.item.out_image_name)
    report["balance"], repeats = balance_section(
        [k.classes for k in train],
        class_map.names,
        merge.balance,
        merge.balance_target_ratio,
        merge.balance_warn_ratio,
    )
    listed = [k for k in kept if k.item.split != "train"]  # what Ultralytics will list: train with its repeats
    listed += [k for k, r in zip(train, repeats, strict=True) for _ in range(r)]
    report["ultralytics_cache"] = write_label_caches(out, final, listed, len(class_map.names))
    splits = sorted({k.item.split for k in kept}, key=SPLITS.index)
    for split in {item.split for item in plan.items} - set(splits):
        (out / "images" / split).rmdir()
        (out / "labels" / split).rmdir()
    train_list = None
    if merge.balance == "oversample":
        train_list = _write_train_list(out, final, train, repeats)
    _write_dataset_yaml(out, final, class_map.names, splits, train_list)
    train_images = os.path.join(out, "images", "train")
    samples = [(os.path.join(train_images, k.item.out_image_name), k.lines) for k in kept if k.item.split == "train"]
    write_report(report, out / "report", samples, class_map.names, merge.samples_grid)
    return report


def _process_all(
    items: list[Item],
    class_map: ClassMap,
    merge: DictConfig,
    folders: BuildFolders,
    tally: Tally,
    records: FileRecords,
) -> list[Kept]:
    """Run _process_batch over all items: in worker processes for a large build, else in a thread pool.

    Threads share the GIL, and on a 2-core machine four threads checking 20k small images took as long as one
    (benchmarks/prep.py; most of the per-image work is Python). Processes run it in parallel; starting them
    costs about a second, so small builds stay in threads. Worker processes come from a forkserver (a fork
    of a process with threads can copy a lock another thread holds), which, as Python's spawn does, imports
    the main script again: a script calling Sentinel must keep its work under `if __name__ == "__main__":`.
    The workers read the merge options from a plain namespace: an OmegaConf attribute access validates its
    key each time (a tenth of a rebuild at 20k).
    """
    from tqdm import tqdm

    options = SimpleNamespace(**OmegaConf.to_container(merge, resolve=True))
    batches = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
    kept: list[Kept] = []
    to_read = sum(1 for item in items if file_key(item.image_stat) not in records.images)
    pool, run_batch = _pool_for(to_read, merge.workers, class_map, options, folders, records)
    try:
        results = pool.map(run_batch, batches, chunksize=BATCHES_PER_MESSAGE)  # a thread pool ignores it
        with tqdm(total=len(items), desc="prep: merging", unit="img", mininterval=1.0, disable=None) as bar:
            for batch, (batch_kept, batch_tally, learnt) in zip(batches, results, strict=True):
                kept.extend(batch_kept)
                tally.add(batch_tally)
                if learnt is not None:
                    records.add_learnt(learnt)
                bar.update(len(batch))
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
        return (*_process_batch(batch, class_map, options, folders, records), None)

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
    """_process_batch in a worker process; what it learnt for the record goes back with the results."""
    w = _WORKER
    kept, tally = _process_batch(items, w["class_map"], w["options"], w["folders"], w["records"])
    return kept, tally, w["records"].take_learnt()


def _process_batch(
    items: list[Item], class_map: ClassMap, merge: SimpleNamespace, folders: BuildFolders, records: FileRecords
) -> tuple[list[Kept], Tally]:
    tally = Tally()
    kept = []
    link_labels = merge.link == "hardlink"
    images = f"{folders.out}{os.sep}images{os.sep}"  # joined by hand: os.path.join was a tenth of a batch
    for item in items:
        k = _keep(_check_one(item, records, tally), class_map, merge, tally)
        if k is None:
            continue
        target = f"{images}{item.split}{os.sep}{item.out_image_name}"
        k.placement = place_file(item.image, target, "copy" if k.image.must_copy else merge.link)
        if k.placement == "copy":
            st = os.stat(target)
            k.image_stat = (st.st_size, st.st_mtime_ns)
        else:  # a hard link is the same inode; os.stat follows a symlink to the source
            k.image_stat = (item.image_stat[0], item.image_stat[1])
        label = f"labels{os.sep}{item.split}{os.sep}{item.out_stem}.txt"
        size, mtime_ns, linked = write_or_link_label(folders, label, k.lines, records if link_labels else None)
        k.label_stat = (size, mtime_ns)
        tally.reads["label_files_linked" if linked else "label_files_written"] += 1
        kept.append(k)
    return kept, tally


@dataclass(frozen=True)
class BuildFolders:
    """The temporary folder a build writes, and the name it is renamed to when complete."""

    out: Path
    final: Path


def write_or_link_label(
    folders: BuildFolders, label: str, lines: list[str], records: FileRecords | None
) -> tuple[int, int, bool]:
    """Write `label` (relative to the build) with one line per box, or hard-link an earlier build's equal file.

    The bytes are looked up in `records` (None: never link, as with merge.link=copy, where the user wants
    files of their own). A file found there is used only while it is the one written then — same inode, size
    and mtime, checked again on the link — so a file edited or replaced since is never shared; then, or on
    any failure to link (gone, too many links), a new file is written and recorded.

    Returns (size, mtime_ns, linked).
    """
    data = "".join(f"{line}\n" for line in lines).encode()
    target = f"{folders.out}{os.sep}{label}"
    if records is None:
        _, size, mtime_ns = _create_file(target, data)
        return (size, mtime_ns, False)
    digest = hashlib.blake2b(data, digest_size=16).digest()
    earlier = records.written_label(digest)
    if earlier is not None and _link_if_unchanged(earlier, target):
        return (earlier[2], earlier[3], True)
    ino, size, mtime_ns = _create_file(target, data)
    records.add_written_label(digest, (f"{folders.final}{os.sep}{label}", ino, size, mtime_ns))
    return (size, mtime_ns, False)


def _link_if_unchanged(earlier: WrittenLabel, target: str) -> bool:
    """Hard-link the earlier file at `target` if it is still what was written; True when linked."""
    path, ino, size, mtime_ns = earlier
    try:
        os.link(path, target)
    except OSError:  # gone with its build, or the inode has the file system's most links
        return False
    st = os.stat(target)
    if (st.st_ino, st.st_size, st.st_mtime_ns) == (ino, size, mtime_ns):
        return True
    os.unlink(target)  # the same name holds other bytes now: not ours to share
    return False


def _create_file(path: str, data: bytes) -> tuple[int, int, int]:
    """Create a new file (O_EXCL: never overwrite) holding `data`; its (inode, size, mtime_ns)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _check_one(item: Item, records: FileRecords, tally: Tally) -> Checked:
    """Check the image and parse the label, each from the per-file record when the file is unchanged."""
    image_key = file_key(item.image_stat)
    content = records.image(image_key)
    if content is None:
        image = check_image(item.image, item.image_stat[0])
        records.add_image(image_key, image)
        tally.reads["images_read"] += 1
    else:
        image = with_extension_check(content, item.image)
        tally.reads["images_from_record"] += 1
    if item.label_stat is None:
        return Checked(item, image, None)
    label_key = file_key(item.label_stat)
    labels = records.label(label_key, item.num_classes)
    if labels is None:
        labels = parse_label_file(item.label, item.num_classes, item.label_stat[0])
        records.add_label(label_key, item.num_classes, labels)
        tally.reads["labels_read"] += 1
    else:
        tally.reads["labels_from_record"] += 1
    return Checked(item, image, labels)


def _keep(checked: Checked, class_map: ClassMap, merge: SimpleNamespace, tally: Tally) -> Kept | None:
    """Apply the bad-label policy and the class map to one checked input; None when it is dropped."""
    item, key = checked.item, (checked.item.source, checked.item.split)
    if checked.image.problem:
        tally.skipped_images[(*key, checked.image.problem)] += 1
        tally.example(f"{item.image}: {checked.image.problem} ({checked.image.detail})")
        return None
    if checked.image.extension_mismatch:
        tally.notes[(*key, "extension_does_not_match_content")] += 1
    if checked.labels is None:
        if not merge.keep_unlabeled_images:
            tally.skipped_images[(*key, "no_label_file")] += 1
            return None
        tally.notes[(*key, "no_label_file_kept_as_background")] += 1
        return Kept(item, checked.image, [], [])
    if checked.labels.unreadable:  # never a silent background: its boxes exist, we just cannot read them
        if merge.on_bad_label == "fail":
            raise SentinelError(
                f"{item.label}: cannot read this label file ({checked.labels.unreadable}). Fix its permissions or "
                "encoding (UTF-8 or UTF-16), or set merge.on_bad_label=skip_image to skip such images"
            )
        tally.skipped_images[(*key, "unreadable_label_file")] += 1
        tally.example(f"{item.label}: unreadable_label_file ({checked.labels.unreadable})")
        return None
    mapping = class_map.per_source[item.source]
    problems = checked.labels.problems
    if problems:
        first = problems[0]
        if merge.on_bad_label == "fail":
            raise SentinelError(
                f"{item.label}:{first.line}: {first.reason}: {first.detail}. Fix the line, or set "
                "merge.on_bad_label=skip_line (drop bad lines) or skip_image (drop the image)"
            )
        for problem in problems:
            tally.skipped_lines[(*key, problem.reason)] += 1
            tally.example(f"{item.label}:{problem.line}: {problem.reason} ({problem.detail})")
        if merge.on_bad_label == "skip_image":
            tally.skipped_images[(*key, "bad_label_line")] += 1
            return None
    if checked.labels.polygons:
        tally.notes[(*key, "polygon_lines_turned_into_boxes")] += checked.labels.polygons
    lines, classes = [], []
    for box in checked.labels.boxes:
        final_id = mapping[box[0]]
        if final_id is None:
            tally.excluded_boxes[(*key, f"{item.source}:{box[0]}")] += 1
            continue
        line = format_box(final_id, box)
        if line in lines:  # equal after rounding or after two classes became one: Ultralytics would drop it
            tally.notes[(*key, "box_equal_to_another_after_merge_dropped")] += 1
            continue
        lines.append(line)
        classes.append(final_id)
    return Kept(item, checked.image, lines, classes)


def _find_duplicates(kept: list[Kept]) -> tuple[list[list[Kept]], list[Kept]]:
    """Groups of identical images (by content), and the val/test members of groups that include train."""
    groups: dict[str, list[Kept]] = defaultdict(list)
    for k in kept:
        groups[k.image.digest].append(k)
    duplicates = [g for g in groups.values() if len(g) > 1]
    leaks = [k for g in duplicates if any(m.item.split == "train" for m in g) for k in g if k.item.split != "train"]
    return duplicates, leaks


def _count(k: Kept, class_map: ClassMap, tally: Tally) -> None:
    key = (k.item.source, k.item.split)
    tally.images[key] += 1
    for class_id in k.classes:
        tally.boxes[(*key, class_map.names[class_id])] += 1
    for class_id in set(k.classes):
        tally.class_images[(*key, class_map.names[class_id])] += 1


def place_file(source: str | Path, target: str | Path, link: str) -> str:
    """Hard link, else symlink, else copy (as far as `link` allows); returns the mode used."""
    if link == "hardlink":
        try:
            os.link(source, target)
            return "hardlink"
        except OSError:  # another filesystem (EXDEV), or protected_hardlinks for files we do not own
            pass
    if link in ("hardlink", "symlink"):
        try:
            os.symlink(os.path.realpath(source), target)
            return "symlink"
        except OSError:
            pass
    shutil.copyfile(source, target)
    return "copy"


def _write_dataset_yaml(
    out: Path, final: Path, names: list[str], splits: list[str], train_list: str | None = None
) -> None:
    data: dict[str, Any] = {"path": str(final)}
    data.update({split: f"images/{split}" for split in splits})
    if train_list:
        data["train"] = train_list
    data["nc"] = len(names)
    data["names"] = dict(enumerate(names))
    (out / "dataset.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def _write_train_list(out: Path, final: Path, train: list[Kept], repeats: list[int]) -> str:
    """train.txt: each training image's final path, once per repeat (merge.balance=oversample; no copies)."""
    images = os.path.join(final, "images", "train", "")
    lines = [f"{images}{k.item.out_image_name}\n" for k, r in zip(train, repeats, strict=True) for _ in range(r)]
    (out / "train.txt").write_text("".join(lines))
    return "train.txt"


# --- report ---------------------------------------------------------------------------------------------


def _report(
    plan: Plan,
    class_map: ClassMap,
    tally: Tally,
    duplicates: list[list[Kept]],
    leaks: list[Kept],
    link_counts: Counter[str],
    copied_bytes: int,
    merge: DictConfig,
    final: Path,
) -> dict[str, Any]:
    def nest(counter: Counter[tuple[str, ...]]) -> dict[str, Any]:
        tree: dict[str, Any] = {}
        for key, value in sorted(counter.items()):
            node = tree
            for part in key[:-1]:
                node = node.setdefault(part, {})
            node[key[-1]] = value
        return tree

    return {
        "folder": str(final),
        "dataset_yaml": str(final / "dataset.yaml"),
        "classes": class_map.as_report(),
        "aliases": dict(merge.aliases),
        "images": nest(tally.images),
        "boxes": nest(tally.boxes),
        "images_per_class": nest(tally.class_images),
        "skipped_images": nest(tally.skipped_images),
        "skipped_label_lines": nest(tally.skipped_lines),
        "excluded_boxes": nest(tally.excluded_boxes),
        "notes": nest(tally.notes),
        "orphan_labels": {s: dict(c) for s, c in plan.orphan_labels.items()},
        "orphan_label_examples": plan.orphan_examples,
        "missing_splits": plan.missing_splits,
        "duplicates": {
            "groups": len(duplicates),
            "images": sum(len(g) for g in duplicates),
            "leaks_into_val_test": len(leaks),
            "leaks_dropped": bool(merge.drop_leaks),
            "examples": [
                [f"{m.item.source}/{m.item.split}/{os.path.basename(m.item.image)}" for m in g] for g in duplicates[:20]
            ],
        },
        "placement": dict(link_counts),
        "bytes_copied": copied_bytes,
        "problem_examples": tally.examples,
        "file_records": {name: tally.reads[name] for name in READ_COUNTS},
        "label_files": {
            "written": tally.reads["label_files_written"],
            "linked_from_earlier_builds": tally.reads["label_files_linked"],
        },
        "totals": {
            "inputs": len(plan.items),
            "kept": sum(tally.images.values()),
            "skipped_images": sum(tally.skipped_images.values()),
            "skipped_label_lines": sum(tally.skipped_lines.values()),
            "boxes": sum(tally.boxes.values()),
        },
    }


def _load_report(folder: Path) -> dict[str, Any]:
    import json

    path = folder / "report" / "prep_report.json"
    return json.loads(path.read_text()) if path.is_file() else {}
