"""The per-image rule of a merge: check an image and its label (or take both from the per-file record), map its
classes, keep or skip it with a counted reason, and place the image and write its label in the build folder.
It runs the same in a thread or in a worker process (parallel.py)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from sentinel.dataset.classes import ClassMap
from sentinel.dataset.file_records import FileRecords, WrittenLabel, file_key
from sentinel.dataset.images import check_image, with_extension_check
from sentinel.dataset.items import Checked, Item, Kept
from sentinel.dataset.labels import format_box, parse_label_file
from sentinel.errors import SentinelError

log = logging.getLogger(__name__)


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


def process_batch(
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


def count_kept(k: Kept, class_map: ClassMap, tally: Tally) -> None:
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
