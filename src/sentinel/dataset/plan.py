"""What a merge will build, before it reads an image: every input image with its label, split and output
name (the plan), why a split found none, and whether the disk has room."""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentinel.dataset.items import Item
from sentinel.dataset.sources.yolo_dir import (
    SourceData,
    label_path_for,
    scan_images,
    scan_label_files,
    stat_or_none,
)
from sentinel.errors import SentinelError

log = logging.getLogger(__name__)


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


def _unique_stem(stem: str, split: str, used: set[tuple[str, str]]) -> str:
    """`<source>__<path>`; a suffix when two inputs would share a stem (a.jpg and a.png, or a list repeating)."""
    candidate, n = stem, 1
    while (split, candidate) in used:
        n += 1
        candidate = f"{stem}__{n}"
    used.add((split, candidate))
    return candidate
