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

This module is the build's outline (cache, lock, fingerprint, duplicates and leaks, dataset.yaml, report); what
is built comes from plan.py, each image's fate from rule.py, and how many at once from parallel.py.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sentinel.config.plain import plain
from sentinel.config.schema import MergeConfig
from sentinel.dataset.balance import balance_section
from sentinel.dataset.classes import ClassMap, build_class_map
from sentinel.dataset.file_records import FileRecords
from sentinel.dataset.items import Kept
from sentinel.dataset.parallel import cyclic_gc_paused, process_all
from sentinel.dataset.plan import Plan, check_disk_space, plan_items, why_no_images
from sentinel.dataset.report import write_report
from sentinel.dataset.rule import BuildFolders, Tally, count_kept
from sentinel.dataset.sources.yolo_dir import (
    SPLITS,
    SourceData,
)
from sentinel.dataset.ultra_cache import write_label_caches
from sentinel.errors import SentinelError
from sentinel.runtime.atomic import atomic_build, is_complete, target_lock
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
READ_COUNTS = ("images_read", "images_from_record", "labels_read", "labels_from_record")


class PrepFailed(SentinelError):
    """No usable dataset came out of the merge; carries the report so that it is written all the same."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class MergeResult:
    folder: Path
    dataset_yaml: Path
    fingerprint: str
    cache_hit: bool
    report: dict[str, Any] = field(default_factory=dict)


def merge_sources(sources: list[SourceData], merge: MergeConfig, data_dir: Path) -> MergeResult:
    """Build (or find in cache) the merged dataset of `sources` under `data_dir/merged/`."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # A worker process of an earlier merge is importing an unguarded main script, which calls us again: it
        # would wait for that merge's lock forever. Fail instead; the parent then says what to do.
        raise SentinelError("prep: merge_sources called while a worker process starts (unguarded main script)")
    with cyclic_gc_paused():
        return _merge_sources(sources, merge, data_dir)


def _merge_sources(sources: list[SourceData], merge: MergeConfig, data_dir: Path) -> MergeResult:
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


# --- planning -------------------------------------------------------------------------------------------


def merge_fingerprint(sources: list[SourceData], plan: Plan, merge: MergeConfig) -> str:
    """Hash of everything the output depends on: merge settings, class lists, every input file's stat."""
    options = plain(merge)
    settings = {k: options[k] for k in FINGERPRINT_KEYS}
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


# --- building -------------------------------------------------------------------------------------------


def build_merged(
    plan: Plan, class_map: ClassMap, merge: MergeConfig, out: Path, final: Path, records: FileRecords
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
    kept = process_all(plan.items, class_map, merge, BuildFolders(out, final), tally, records)
    duplicates, leaks = _find_duplicates(kept)
    if merge.drop_leaks:
        for k in leaks:
            tally.skipped_images[(k.item.source, k.item.split, "leak_of_train_image")] += 1
            (out / "images" / k.item.split / k.item.out_image_name).unlink()
            (out / "labels" / k.item.split / f"{k.item.out_stem}.txt").unlink()
        leaked = {id(k) for k in leaks}
        kept = [k for k in kept if id(k) not in leaked]
    for k in kept:
        count_kept(k, class_map, tally)
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


def _find_duplicates(kept: list[Kept]) -> tuple[list[list[Kept]], list[Kept]]:
    """Groups of identical images (by content), and the val/test members of groups that include train."""
    groups: dict[str, list[Kept]] = defaultdict(list)
    for k in kept:
        groups[k.image.digest].append(k)
    duplicates = [g for g in groups.values() if len(g) > 1]
    leaks = [k for g in duplicates if any(m.item.split == "train" for m in g) for k in g if k.item.split != "train"]
    return duplicates, leaks


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
    merge: MergeConfig,
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
