"""A persistent record of what prep learnt from each input file, so that an unchanged file is never read again.

A build that differs from an earlier one only in merge options (aliases, include/exclude, class order,
drop_leaks...) gets a new merged folder, but its inputs are the same files: their image checks (decode,
size, content hash) and label parses are taken from this record instead of being read and decoded again.

An entry is keyed by the file's identity on disk — (device, inode, size, mtime in ns) — never by its path:
a file edited in place gets a new mtime (and usually size), a replaced one a new inode, and either misses
the record and is read afresh. A label parse also depends on the source's class count, which is in its key.
Unreadable files are never recorded: permissions may be fixed without touching the file.

It also lists the label files earlier builds wrote, by the blake2b of their bytes, with where each lives and
its (inode, size, mtime_ns) when written: a later build whose label has the same bytes hard-links that file
instead of creating a new one (sentinel.dataset.merge.write_or_link_label). Creating a file costs an inode, which on
ext4 is many times the cost of a link, and a rebuild after a change of merge options writes labels that are
mostly byte for byte the ones before. An entry whose file is gone or changed is simply not used, and the
entries of a build folder that is gone are dropped when the record is saved.

Stored with `marshal` (tuples of plain values; several times faster to load than pickle) in
`data_dir/records/`, written to a temporary name and renamed into place under a lock, merged with what
another process saved meanwhile. A record that cannot be read (another Python version, a damaged file) is
treated as empty: it is only ever a shortcut, never the truth.
"""

from __future__ import annotations

import logging
import marshal
import os
from pathlib import Path
from typing import Any

from filelock import FileLock

from sentinel.dataset.images import ImageCheck
from sentinel.dataset.labels import LabelParse, Problem
from sentinel.runtime.runs import write_atomic

log = logging.getLogger(__name__)

FORMAT = 3  # bump when what is stored changes; the file name carries it, so old records are simply ignored
# (3: image digests are SHA-256, sentinel.dataset.images; a BLAKE2b one of an earlier record would match no new one)
LOCK_TIMEOUT_S = 60.0
FileKey = tuple[int, int, int, int]  # (st_dev, st_ino, st_size, st_mtime_ns)
WrittenLabel = tuple[str, int, int, int]  # (final path, st_ino, st_size, st_mtime_ns) of a label a build wrote
Learnt = tuple[dict[FileKey, tuple], dict[tuple, tuple], dict[bytes, WrittenLabel]]  # new rows of each table


def file_key(stat: tuple[int, ...]) -> FileKey:
    """The record key of a FileStat (size, mtime_ns, mode, dev, ino)."""
    size, mtime_ns, _mode, dev, ino = stat
    return (dev, ino, size, mtime_ns)


class FileRecords:
    """Image checks and label parses by file identity; thread-safe for lookups and for `add_*` (dict ops)."""

    def __init__(
        self,
        path: Path,
        images: dict[FileKey, tuple],
        labels: dict[tuple, tuple],
        written: dict[bytes, WrittenLabel] | None = None,
    ) -> None:
        self.path = path
        self.images = images
        self.labels = labels
        self.written = written if written is not None else {}
        self._new_images: dict[FileKey, tuple] = {}
        self._new_labels: dict[tuple, tuple] = {}
        self._new_written: dict[bytes, WrittenLabel] = {}

    @classmethod
    def load(cls, data_dir: Path) -> FileRecords:
        return cls.load_file(data_dir / "records" / f"prep-files.v{FORMAT}.marshal")

    @classmethod
    def load_file(cls, path: Path) -> FileRecords:
        return cls(path, *_read(path))

    # --- images -------------------------------------------------------------------------------------

    def image(self, key: FileKey) -> ImageCheck | None:
        row = self.images.get(key)
        return ImageCheck(*row) if row is not None else None

    def add_image(self, key: FileKey, check: ImageCheck) -> None:
        """Record what the content gave (extension_mismatch depends on the name, so it is stored as False)."""
        if check.problem != "unreadable_image":
            c = check
            row = (c.digest, c.format, c.problem, c.detail, c.must_copy, False, c.size_bytes, c.width, c.height)
            self._new_images[key] = row

    # --- labels -------------------------------------------------------------------------------------

    def label(self, key: FileKey, num_classes: int) -> LabelParse | None:
        row = self.labels.get((*key, num_classes))
        if row is None:
            return None
        boxes, problems, polygons = row
        return LabelParse([tuple(b) for b in boxes], [Problem(*p) for p in problems], polygons)

    def add_label(self, key: FileKey, num_classes: int, parse: LabelParse) -> None:
        if not parse.unreadable:
            problems = [(p.line, p.reason, p.detail) for p in parse.problems]
            self._new_labels[(*key, num_classes)] = (parse.boxes, problems, parse.polygons)

    # --- label files written by earlier builds -------------------------------------------------------

    def written_label(self, digest: bytes) -> WrittenLabel | None:
        return self.written.get(digest)

    def add_written_label(self, digest: bytes, written: WrittenLabel) -> None:
        self._new_written[digest] = written

    # --- saving -------------------------------------------------------------------------------------

    def take_learnt(self) -> Learnt:
        """The entries added since the last call (a worker process sends them to the parent, which saves)."""
        learnt = (self._new_images, self._new_labels, self._new_written)
        self._new_images, self._new_labels, self._new_written = {}, {}, {}
        return learnt

    def add_learnt(self, learnt: Learnt) -> None:
        self._new_images.update(learnt[0])
        self._new_labels.update(learnt[1])
        self._new_written.update(learnt[2])

    @property
    def new_entries(self) -> int:
        return len(self._new_images) + len(self._new_labels) + len(self._new_written)

    def save(self) -> None:
        """Add this build's new entries to the record on disk (re-read under the lock: others may have saved)."""
        if not self.new_entries:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock", timeout=LOCK_TIMEOUT_S):
            images, labels, written = _read(self.path)
            images.update(self._new_images)
            labels.update(self._new_labels)
            written.update(self._new_written)
            written = _of_existing_builds(written)
            write_atomic(self.path, lambda tmp: tmp.write_bytes(marshal.dumps((FORMAT, images, labels, written))))
        self.images, self.labels, self.written = images, labels, written
        self._new_images, self._new_labels, self._new_written = {}, {}, {}


def _of_existing_builds(written: dict[bytes, WrittenLabel]) -> dict[bytes, WrittenLabel]:
    """The entries whose build folder is still there (`<build>/labels/<split>/<name>`): one stat per build.

    Entries of a deleted build, or of one that failed and so was never renamed into place, could never be
    linked again; without this the table would grow with every build ever made.
    """
    exists: dict[str, bool] = {}
    kept = {}
    for digest, entry in written.items():
        build = os.path.dirname(os.path.dirname(os.path.dirname(entry[0])))
        if build not in exists:
            exists[build] = os.path.isdir(build)
        if exists[build]:
            kept[digest] = entry
    return kept


def _read(path: Path) -> tuple[dict[Any, tuple], dict[Any, tuple], dict[bytes, WrittenLabel]]:
    try:
        with open(path, "rb") as handle:
            version, *tables = marshal.load(handle)
    except FileNotFoundError:
        return {}, {}, {}
    except (OSError, EOFError, ValueError, TypeError) as error:
        log.warning("prep: ignoring the file record %s (%s); files will be read again", path, error)
        return {}, {}, {}
    if version != FORMAT or len(tables) != 3 or not all(isinstance(table, dict) for table in tables):
        return {}, {}, {}
    images, labels, written = tables
    return images, labels, written
