"""Write Ultralytics' label cache (`labels/<split>.cache`) for a merged dataset while prep builds it.

Without it, the first training (and every evaluation on a new folder) opens every image again with PIL and
parses every label file — work prep has just done. Prep knows each image's EXIF-corrected size
(sentinel.dataset.images) and each label's lines, so it writes the cache in Ultralytics' own format, which
Ultralytics then loads ("Scanning ...cache... " with no scanning pass, no "New cache created").

The format follows ultralytics 8.4 `YOLODataset.cache_labels` / `get_labels` / `get_cache_hash` and
`data.utils.verify_image_label` / `get_hash` / `save_dataset_cache_file`; tests/test_ultra_cache.py compares
a cache written here with one Ultralytics writes itself on the same folder, so a format drift fails a test
rather than silently costing a rescan (Ultralytics rejects a cache whose version or hash differ, and scans).

A split with a JPEG that lacks its end marker gets no cache: Ultralytics' scan repairs such a file and says
so, and the cache must not hide that.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from sentinel.dataset.items import Kept

# ultralytics.data.dataset.DATASET_CACHE_VERSION of the pinned Ultralytics (8.4.190). Kept here rather than
# imported: that import loads torch (~500 MB), most of prep's memory, for one string. tests/test_ultra_cache.py
# compares it with Ultralytics' own, so an upgrade that changes it fails there, not silently in a rescan.
CACHE_VERSION = "1.0.12"

# YOLODataset.get_cache_hash's scan settings for a detection dataset: (use_keypoints, nc, kpt_shape, single_cls).
# Sentinel trains detection with single_cls off; a run that changes either only costs Ultralytics a rescan.


def scan_args(num_classes: int) -> str:
    return str((False, num_classes, None, False))


def write_label_caches(out: Path, final: Path, kept: list[Kept], num_classes: int) -> dict[str, str]:
    """One cache per split in the build folder `out` (renamed to `final` later); returns what each split got."""
    import numpy as np

    by_split: dict[str, list[Kept]] = {}
    for k in kept:
        by_split.setdefault(k.item.split, []).append(k)
    written: dict[str, str] = {}
    for split, items in sorted(by_split.items()):
        if any(k.image.must_copy for k in items):
            written[split] = "none: a JPEG without its end marker, which Ultralytics' own scan repairs"
            continue
        items = sorted(items, key=lambda k: k.item.out_image_name)  # Ultralytics sorts its image paths
        images = os.path.join(final, "images", split, "")
        cache = {
            "labels": [_label_entry(images + k.item.out_image_name, k, np) for k in items],
            "hash": _cache_hash(final, split, items, num_classes),
            "results": _results(items),
            "msgs": [],
            "version": CACHE_VERSION,
        }
        _save(out / "labels" / f"{split}.cache", cache, np)
        written[split] = "written"
    return written


def _label_entry(im_file: str, k: Kept, np: Any) -> dict[str, Any]:
    """What verify_image_label + result_to_label make of one image: boxes parsed from the lines prep wrote.

    The merge writes no two equal lines, so Ultralytics' duplicate removal has nothing to remove.
    """
    lines = [line.split() for line in k.lines]
    lb = np.array(lines, dtype=np.float32) if lines else np.zeros((0, 5), dtype=np.float32)
    return {
        "im_file": im_file,
        "shape": (k.image.height, k.image.width),
        "cls": lb[:, 0:1],
        "bboxes": lb[:, 1:],
        "segments": [],
        "keypoints": None,
        "normalized": True,
        "bbox_format": "xywh",
    }


def _results(items: list[Kept]) -> tuple[int, int, int, int, int]:
    """(found, missing, empty, corrupt, total): every kept image has a label file, empty for a background."""
    empty = sum(1 for k in items if not k.lines)
    return (len(items), 0, empty, 0, len(items))


def _cache_hash(final: Path, split: str, items: list[Kept], num_classes: int) -> str:
    """ultralytics.data.utils.get_hash(label_files + im_files + [scan_args]) as it will be at `final`.

    The names are the final paths; the (size, mtime_ns) are those the merge saw when it wrote each file into
    the build folder, which files keep through the folder's rename.
    """
    labels, images = os.path.join(final, "labels", split, ""), os.path.join(final, "images", split, "")
    # One string for all of it, encoded once as os.fsencode encodes each name: the same bytes as an update per
    # name and per stat, without 160k calls.
    parts = [f"{labels}{k.item.out_stem}.txt\0{k.label_stat[0]}:{k.label_stat[1]}\0" for k in items]
    parts += [f"{images}{k.item.out_image_name}\0{k.image_stat[0]}:{k.image_stat[1]}\0" for k in items]
    parts.append(f"{scan_args(num_classes)}\0\0")  # not a file: get_hash's stat fails and it adds one NUL
    return hashlib.sha256(
        "".join(parts).encode(sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())
    ).hexdigest()


def _save(path: Path, cache: dict[str, Any], np: Any) -> None:
    """np.save of the dict, as save_dataset_cache_file does (the build folder is private: no temp name needed)."""
    with open(path, "wb") as handle:
        np.save(handle, cache)
