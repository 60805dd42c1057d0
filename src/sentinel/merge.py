"""Merge sources into one YOLO dataset, never touching them.

Output: data_dir/merged/<fingerprint>/ with images/<split>/ (links to the sources' files, named
`<source>__<path>` so equal file names cannot collide), freshly written labels/<split>/ in one class space,
a dataset.yaml with an absolute `path`, and report/. The fingerprint hashes the merge settings and every
input file's path, size and mtime, so an unchanged rerun is a cache hit that does no work, and any change
builds a new folder. Each build happens in a temporary folder that is renamed into place when complete.
Ultralytics writes its labels/*.cache inside the folder; since a folder's content never changes after the
rename, that cache can never be stale.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from sentinel.atomic import atomic_build, is_complete, target_lock
from sentinel.classes import ClassMap, build_class_map
from sentinel.errors import SentinelError
from sentinel.fingerprint import stable_hash
from sentinel.images import ImageCheck, check_image
from sentinel.labels import LabelParse, format_box, parse_label_file
from sentinel.report import write_report
from sentinel.sources.yolo_dir import SPLITS, SourceData, label_path_for, list_images

log = logging.getLogger(__name__)

MERGE_VERSION = 1  # bump when the output format changes, so old caches are not reused
FINGERPRINT_KEYS = (
    "aliases",
    "include",
    "exclude",
    "classes",
    "on_bad_label",
    "keep_unlabeled_images",
    "drop_leaks",
    "link",
)
BATCH = 64


@dataclass(frozen=True)
class Item:
    """One input image as planned: where it is, where its label should be, and what it becomes."""

    source: str
    split: str
    image: Path
    label: Path
    label_stat: tuple[int, int] | None  # (size, mtime_ns), None when there is no label file
    image_stat: tuple[int, int]
    out_stem: str
    num_classes: int


@dataclass
class Plan:
    items: list[Item]
    orphan_labels: dict[str, Counter[str]]  # source → split → label files with no image
    orphan_examples: list[str]
    missing_splits: dict[str, list[str]]


@dataclass
class MergeResult:
    folder: Path
    dataset_yaml: Path
    fingerprint: str
    cache_hit: bool
    report: dict[str, Any] = field(default_factory=dict)


def merge_sources(sources: list[SourceData], merge: DictConfig, data_dir: Path) -> MergeResult:
    """Build (or find in cache) the merged dataset of `sources` under `data_dir/merged/`."""
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
        with atomic_build(final, {"fingerprint": fingerprint}) as tmp:
            report = build_merged(plan, class_map, merge, tmp, final)
    log.info("prep: built %s", final)
    return MergeResult(final, final / "dataset.yaml", fingerprint, False, report)


# --- planning -------------------------------------------------------------------------------------------


def plan_items(sources: list[SourceData]) -> Plan:
    """List every image of every split with its label; find labels without images. Stats only, no reads."""
    items: list[Item] = []
    orphans: dict[str, Counter[str]] = defaultdict(Counter)
    orphan_examples: list[str] = []
    used_stems: set[tuple[str, str]] = set()
    for source in sources:
        for split, entries in source.splits.items():
            for entry in entries:
                labels = _label_files_near(entry)
                for image in list_images(entry):
                    label = label_path_for(image)
                    label_stat = labels.pop(label, None) if labels is not None else _stat(label)
                    stem = _unique_stem(source.name, split, entry, image, used_stems)
                    image_stat = _stat(image) or (0, 0)
                    items.append(
                        Item(source.name, split, image, label, label_stat, image_stat, stem, len(source.names))
                    )
                for orphan in sorted(labels or {}):
                    orphans[source.name][split] += 1
                    if len(orphan_examples) < 20:
                        orphan_examples.append(str(orphan))
    return Plan(items, dict(orphans), orphan_examples, {s.name: s.missing_splits for s in sources})


def merge_fingerprint(sources: list[SourceData], plan: Plan, merge: DictConfig) -> str:
    """Hash of everything the output depends on: merge settings, class lists, every input file's stat."""
    settings = {k: OmegaConf.to_container(merge, resolve=True)[k] for k in FINGERPRINT_KEYS}
    files = [(i.source, i.split, str(i.image), i.image_stat, i.label_stat) for i in plan.items]
    return stable_hash(
        {
            "version": MERGE_VERSION,
            "settings": settings,
            "sources": [(s.name, s.names) for s in sources],
            "files": stable_hash(files, 32),
        }
    )


def _label_files_near(entry: Path) -> dict[Path, tuple[int, int]] | None:
    """All .txt files of the labels folder matching an images folder, with their stats; None for list files."""
    if not entry.is_dir():
        return None
    labels_dir = label_path_for(entry / "x.jpg").parent
    if labels_dir == entry or not labels_dir.is_dir():
        return {}
    found: dict[Path, tuple[int, int]] = {}
    stack = [labels_dir]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir():
                    stack.append(Path(e.path))
                elif e.name.endswith(".txt"):
                    st = e.stat()
                    found[Path(e.path)] = (st.st_size, st.st_mtime_ns)
    return found


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def _unique_stem(source: str, split: str, entry: Path, image: Path, used: set[tuple[str, str]]) -> str:
    rel = image.relative_to(entry) if entry.is_dir() else Path(image.name)
    stem = f"{source}__{'__'.join(rel.with_suffix('').parts)}"
    candidate, n = stem, 1
    while (split, candidate) in used:  # same stem twice (a.jpg and a.png, or a list naming a file twice)
        n += 1
        candidate = f"{stem}__{n}"
    used.add((split, candidate))
    return candidate


# --- building -------------------------------------------------------------------------------------------


@dataclass
class Checked:
    item: Item
    image: ImageCheck
    labels: LabelParse | None


@dataclass
class Kept:
    item: Item
    image: ImageCheck
    lines: list[str]
    classes: list[int]


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
        self.examples: list[str] = []

    def example(self, text: str) -> None:
        if len(self.examples) < 50:
            self.examples.append(text)


def build_merged(plan: Plan, class_map: ClassMap, merge: DictConfig, out: Path, final: Path) -> dict[str, Any]:
    """Check every input, write the merged dataset into `out` (renamed to `final` later), return the report."""
    tally = Tally()
    kept = [k for k in (_keep(c, class_map, merge, tally) for c in _check_all(plan.items, merge.workers)) if k]
    duplicates, leaks = _find_duplicates(kept)
    if merge.drop_leaks:
        leaked = {id(k) for k in leaks}
        for k in leaks:
            tally.skipped_images[(k.item.source, k.item.split, "leak_of_train_image")] += 1
        kept = [k for k in kept if id(k) not in leaked]
    for k in kept:
        _count(k, class_map, tally)
    if not any(k.item.split == "train" for k in kept):
        raise SentinelError("prep: no training images left after validation. Check the report's skipped counts")
    if not any(k.item.split == "val" for k in kept):
        raise SentinelError("prep: no validation images (no source has a usable val split). Fix: add one")
    link_counts, copied_bytes = _write_files(kept, merge.link, out)
    splits = sorted({k.item.split for k in kept}, key=SPLITS.index)
    _write_dataset_yaml(out, final, class_map.names, splits)
    report = _report(plan, class_map, tally, duplicates, leaks, link_counts, copied_bytes, merge, final)
    samples = [
        (out / "images" / k.item.split / f"{k.item.out_stem}{k.item.image.suffix.lower()}", k.lines)
        for k in kept
        if k.item.split == "train"
    ]
    write_report(report, out / "report", samples, class_map.names, merge.samples_grid)
    return report


def _check_all(items: list[Item], workers: int) -> Iterator[Checked]:
    """Hash, decode and parse every input in a thread pool (hashing and decoding release the GIL)."""
    from tqdm import tqdm

    batches = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(items), desc="prep: checking", unit="img", mininterval=1.0, disable=None) as bar,
    ):
        for done in pool.map(_check_batch, batches):
            bar.update(len(done))
            yield from done


def _check_batch(items: list[Item]) -> list[Checked]:
    return [_check_one(item) for item in items]


def _check_one(item: Item) -> Checked:
    image = check_image(item.image)
    labels = parse_label_file(item.label, item.num_classes) if item.label_stat is not None else None
    return Checked(item, image, labels)


def _keep(checked: Checked, class_map: ClassMap, merge: DictConfig, tally: Tally) -> Kept | None:
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
        lines.append(format_box(final_id, box))
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


def _write_files(kept: list[Kept], link: str, out: Path) -> tuple[Counter[str], int]:
    """Link every image and write every label into `out`; returns how each image got there and bytes copied."""
    from tqdm import tqdm

    for split in {k.item.split for k in kept}:
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
    modes: Counter[str] = Counter()
    copied = 0
    for k in tqdm(kept, desc="prep: writing", unit="img", mininterval=1.0, disable=None):
        target = out / "images" / k.item.split / f"{k.item.out_stem}{k.item.image.suffix.lower()}"
        mode = place_file(k.item.image, target, "copy" if k.image.must_copy else link)
        modes[mode] += 1
        copied += k.image.size_bytes if mode == "copy" else 0
        label = out / "labels" / k.item.split / f"{k.item.out_stem}.txt"
        label.write_text("".join(f"{line}\n" for line in k.lines))
    return modes, copied


def place_file(source: Path, target: Path, link: str) -> str:
    """Hard link, else symlink, else copy (as far as `link` allows); returns the mode used."""
    if link == "hardlink":
        try:
            os.link(source, target)
            return "hardlink"
        except OSError:  # another filesystem (EXDEV), or protected_hardlinks for files we do not own
            pass
    if link in ("hardlink", "symlink"):
        try:
            os.symlink(source.resolve(), target)
            return "symlink"
        except OSError:
            pass
    shutil.copyfile(source, target)
    return "copy"


def _write_dataset_yaml(out: Path, final: Path, names: list[str], splits: list[str]) -> None:
    data: dict[str, Any] = {"path": str(final)}
    data.update({split: f"images/{split}" for split in splits})
    data["nc"] = len(names)
    data["names"] = dict(enumerate(names))
    (out / "dataset.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


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
            "examples": [[f"{m.item.source}/{m.item.split}/{m.item.image.name}" for m in g] for g in duplicates[:20]],
        },
        "placement": dict(link_counts),
        "bytes_copied": copied_bytes,
        "problem_examples": tally.examples,
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
