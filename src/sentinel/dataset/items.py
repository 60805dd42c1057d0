"""The records one input image passes through during a build: planned (Item), checked (Checked), kept (Kept).

Their own module so that the per-image rule (merge), the writers of Ultralytics' label cache (ultra_cache)
and the report share them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from sentinel.dataset.images import ImageCheck
from sentinel.dataset.labels import LabelParse
from sentinel.dataset.sources.yolo_dir import FileStat


@dataclass(frozen=True)
class Item:
    """One input image as planned: where it is, where its label should be, and what it becomes."""

    source: str
    split: str
    image: str  # absolute paths as strings: prep handles tens of thousands, pathlib is too slow here
    label: str
    label_stat: FileStat | None  # None when there is no label file
    image_stat: FileStat
    out_stem: str
    num_classes: int
    out_image_name: str  # out_stem + the image's extension, lower case; computed once (a build reads it ~5x)


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
    placement: str = ""  # hardlink | symlink | copy
    # (size, mtime_ns) of the placed image and the written label, as os.stat will report them at the final
    # path: what Ultralytics' cache hash is made of (sentinel.dataset.ultra_cache)
    image_stat: tuple[int, int] = (0, 0)
    label_stat: tuple[int, int] = (0, 0)
