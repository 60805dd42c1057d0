"""Class balance of a merged training split: the counts prep reports, and oversampling of rare classes.

The seed's mix (thousands of COCO persons beside a few hundred guns and knives) trains a detector that is
good at persons. Prep counts boxes and images per class in the training split and warns when the most
frequent class has more than `merge.balance_warn_ratio` times the boxes of the least frequent one.

`merge.balance=oversample` lists rare classes' training images more than once in `train.txt` (Ultralytics
reads an image list file as the split; no image is copied): an image is repeated by the largest factor any
of its classes needs, as in LVIS' repeat-factor sampling, so that every class reaches at least
1 / `merge.balance_target_ratio` of the most frequent class's boxes. An image holding a frequent class too
repeats those boxes as well, so the ratio reached is reported, not assumed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

# (class ids of an image's boxes) for each training image, in the order they are listed
ImageClasses = Sequence[int]


def class_counts(images: Iterable[ImageClasses], names: list[str], repeats: Sequence[int] | None = None) -> dict:
    """Boxes and images per class name; each image counted `repeats[i]` times when given."""
    boxes: Counter[int] = Counter()
    with_class: Counter[int] = Counter()
    for i, classes in enumerate(images):
        times = repeats[i] if repeats is not None else 1
        for c, n in Counter(classes).items():
            boxes[c] += n * times
            with_class[c] += times
    return {name: {"boxes": boxes[c], "images": with_class[c]} for c, name in enumerate(names)}


def imbalance_ratio(counts: dict[str, dict[str, int]]) -> float | None:
    """Most over least frequent class by boxes; None when some class has no box at all (infinitely rare)."""
    boxes = [c["boxes"] for c in counts.values()]
    if not boxes or min(boxes) == 0:
        return None
    return max(boxes) / min(boxes)


def repeat_factors(images: Sequence[ImageClasses], target_ratio: float) -> list[int]:
    """How many times each image is listed so every class has at least max_boxes / target_ratio boxes.

    A class with n boxes needs each of its images ceil(max / (target * n)) times; an image takes the
    largest need among its classes; a background image is listed once.
    """
    boxes = Counter(c for classes in images for c in classes)
    most = max(boxes.values(), default=0)
    need = {c: max(1, math.ceil(most / (target_ratio * n) - 1e-9)) for c, n in boxes.items()}
    return [max((need[c] for c in set(classes)), default=1) for classes in images]


def balance_section(
    images: Sequence[ImageClasses], names: list[str], mode: str, target_ratio: float, warn_ratio: float
) -> tuple[dict[str, Any], list[int]]:
    """prep_report's `balance` section and each training image's repeat count (all 1 unless oversampling)."""
    before = class_counts(images, names)
    ratio = imbalance_ratio(before)
    empty = [name for name, c in before.items() if c["boxes"] == 0]
    section: dict[str, Any] = {"split": "train", "per_class": before, "ratio": ratio, "warn_ratio": warn_ratio}
    if empty:
        section["warning"] = f"no training boxes for {', '.join(empty)}: the model cannot learn them"
    elif ratio is not None and ratio > warn_ratio:
        most = max(before, key=lambda n: before[n]["boxes"])
        least = min(before, key=lambda n: before[n]["boxes"])
        section["warning"] = (
            f"{most} has {ratio:.1f}x the training boxes of {least} (over merge.balance_warn_ratio={warn_ratio:g}); "
            "consider merge.balance=oversample or training.class_weights"
        )
    section["mode"] = mode
    repeats = [1] * len(images)
    if mode == "oversample":
        repeats = repeat_factors(images, target_ratio)
        after = class_counts(images, names, repeats)
        section["oversample"] = {
            "target_ratio": target_ratio,
            "listed_images": sum(repeats),
            "images_listed_more_than_once": sum(1 for r in repeats if r > 1),
            "per_class": after,
            "ratio": imbalance_ratio(after),
        }
    return section, repeats


def balance_markdown(section: dict[str, Any]) -> list[str]:
    """The report's lines for the balance section."""
    ratio = section["ratio"]
    lines = [
        "",
        "## Class balance (training split)",
        "",
        "| class | boxes | images |" + (" boxes listed | images listed |" if "oversample" in section else ""),
        "|---|---|---|" + ("---|---|" if "oversample" in section else ""),
    ]
    after = section.get("oversample", {}).get("per_class", {})
    for name, c in section["per_class"].items():
        extra = f" {after[name]['boxes']} | {after[name]['images']} |" if after else ""
        lines.append(f"| {name} | {c['boxes']} | {c['images']} |{extra}")
    lines += ["", f"Most / least frequent class by boxes: {'n/a' if ratio is None else f'{ratio:.2f}'}."]
    if "oversample" in section:
        over = section["oversample"]
        reached = "n/a" if over["ratio"] is None else f"{over['ratio']:.2f}"
        lines.append(
            f"Oversampled (target {over['target_ratio']:g}): {over['listed_images']} images listed in train.txt, "
            f"{over['images_listed_more_than_once']} of them more than once; ratio reached {reached}."
        )
    if "warning" in section:
        lines.append(f"**Warning:** {section['warning']}.")
    return lines
