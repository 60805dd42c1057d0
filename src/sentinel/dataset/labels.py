"""Parse and validate one YOLO label file, line by line, without ever raising for bad content.

Each bad line becomes a Problem (line number, reason, detail) that the merge counts and reports, or turns
into an error naming file and line when `merge.on_bad_label=fail`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from sentinel.dataset.file_bytes import read_file

# A box: (class id in its source, x_center, y_center, width, height), all normalised.
Box = tuple[int, float, float, float, float]
EPS = 1e-6  # exporters write 1.0000001; Ultralytics' own check clips the same way


@dataclass(frozen=True)
class Problem:
    line: int
    reason: str
    detail: str


@dataclass
class LabelParse:
    boxes: list[Box] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    polygons: int = 0  # segmentation lines turned into their bounding box
    unreadable: str = ""  # why the file could not be read or decoded; then boxes and problems are empty


def parse_label_file(path: str | Path, num_classes: int, size: int = 0) -> LabelParse:
    """Read `path` (`size`: its size at the last stat, if known) and validate each line against a source with
    `num_classes` classes."""
    result = LabelParse()
    try:
        text = decode_label_bytes(read_file(path, size))
    except (OSError, UnicodeDecodeError) as error:
        result.unreadable = f"{type(error).__name__}: {error}"
        return result
    seen: set[Box] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        box, problem, polygon = parse_line(raw, number, num_classes)
        if problem is not None:
            result.problems.append(problem)
        elif box in seen:
            result.problems.append(Problem(number, "duplicate_box", "same class and box as an earlier line"))
        else:
            seen.add(box)
            result.boxes.append(box)
            result.polygons += polygon
    return result


def decode_label_bytes(data: bytes) -> str:
    """UTF-8, with or without a BOM, or UTF-16 with its BOM (PowerShell's `>` writes that)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    return data.decode("utf-8-sig")


def parse_line(raw: str, number: int, num_classes: int) -> tuple[Box, None, bool] | tuple[None, Problem, bool]:
    """One line → (box, None, was_polygon) or (None, problem, False)."""
    fields = raw.split()
    polygon = len(fields) > 5
    if len(fields) < 5 or (polygon and (len(fields) - 1) % 2 != 0) or (polygon and len(fields) < 7):
        return None, Problem(number, "wrong_field_count", f"{len(fields)} fields, expected 5 (class x y w h)"), False
    try:
        class_float = float(fields[0])
        values = [float(v) for v in fields[1:]]
    except ValueError:
        return None, Problem(number, "not_a_number", f"cannot read {raw.strip()!r} as numbers"), False
    if not all(math.isfinite(v) for v in [class_float, *values]):
        return None, Problem(number, "non_finite", f"NaN or infinity in {raw.strip()!r}"), False
    if class_float != int(class_float) or not 0 <= class_float < num_classes:
        detail = f"class id {fields[0]} is not one of the source's {num_classes} classes (0..{num_classes - 1})"
        return None, Problem(number, "bad_class_id", detail), False
    if polygon:
        values = _polygon_to_box(values)
    if any(v < -EPS or v > 1 + EPS for v in values):
        return None, Problem(number, "out_of_range", f"coordinates {values} not within [0, 1]"), False
    x, y, w, h = (min(max(v, 0.0), 1.0) for v in values)
    if w <= 0 or h <= 0:
        return None, Problem(number, "zero_size", f"width {w} and height {h} must be positive"), False
    return (int(class_float), x, y, w, h), None, polygon


def format_box(class_id: int, box: Box) -> str:
    """A label line with the merged class id; 6 decimals like Ultralytics' own exports."""
    _, x, y, w, h = box
    return f"{class_id} {x:.6f} {y:.6f} {w:.6f} {h:.6f}"


def _polygon_to_box(coords: list[float]) -> list[float]:
    xs, ys = coords[0::2], coords[1::2]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]
