"""Write prep's report where a person looks: JSON for programs, a markdown summary, and two pictures
(class distribution per split; a grid of training images with their merged boxes and names drawn)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from sentinel.dataset.balance import balance_markdown
from sentinel.runtime.runs import save_figure_atomic, write_atomic, write_text_atomic

Sample = tuple[str | Path, list[str]]  # a training image and its merged label lines

PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
]


def write_report(report: dict[str, Any], folder: Path, samples: list[Sample], names: list[str], grid: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "prep_report.json", json.dumps(report, indent=2, sort_keys=False))
    write_text_atomic(folder / "prep_report.md", summary_markdown(report))
    plot_class_distribution(report, names, folder / "class_distribution.png")
    if grid > 0 and samples:
        draw_samples(samples, names, grid, folder / "samples.png")


def summary_markdown(report: dict[str, Any]) -> str:
    totals = report["totals"]
    lines = [
        "# Prep report",
        "",
        f"Dataset: `{report['dataset_yaml']}`",
        "",
        f"{totals['kept']} of {totals['inputs']} images kept, {totals['boxes']} boxes; "
        f"{totals['skipped_images']} images and {totals['skipped_label_lines']} label lines skipped.",
        "",
        "## Classes (final id: name ← source:original)",
        "",
    ]
    for index, name in enumerate(report["classes"]["names"]):
        lines.append(f"- {index}: **{name}** ← {', '.join(report['classes']['origins'][name])}")
    for name, origins in report["classes"]["excluded"].items():
        lines.append(f"- excluded: {name} ← {', '.join(origins)}")
    lines += [
        "",
        "## Images and boxes per source and split",
        "",
        "| source | split | images | boxes |",
        "|---|---|---|---|",
    ]
    for source, splits in report["images"].items():
        for split, count in splits.items():
            boxes = sum(report["boxes"].get(source, {}).get(split, {}).values())
            lines.append(f"| {source} | {split} | {count} | {boxes} |")
    for title, key in (
        ("Skipped images", "skipped_images"),
        ("Skipped label lines", "skipped_label_lines"),
        ("Excluded boxes", "excluded_boxes"),
        ("Notes", "notes"),
    ):
        rows = [
            (s, sp, r, n)
            for s, by_split in report[key].items()
            for sp, by_r in by_split.items()
            for r, n in by_r.items()
        ]
        if rows:
            lines += ["", f"## {title}", "", "| source | split | reason | count |", "|---|---|---|---|"]
            lines += [f"| {s} | {sp} | {r} | {n} |" for s, sp, r, n in rows]
    dup = report["duplicates"]
    lines += [
        "",
        "## Duplicates and leaks",
        "",
        f"{dup['groups']} groups of identical images ({dup['images']} images); {dup['leaks_into_val_test']} "
        f"val/test images also in train ({'dropped' if dup['leaks_dropped'] else 'kept'}).",
    ]
    for split_list in report["missing_splits"].items():
        if split_list[1]:
            lines.append(f"- {split_list[0]} has no {', '.join(split_list[1])} split")
    if report["orphan_labels"]:
        lines.append(f"- label files without an image: {report['orphan_labels']}")
    lines += ["", f"Images placed: {report['placement']}; bytes copied: {report['bytes_copied']}."]
    reads = report.get("file_records", {})
    if reads:
        lines.append(
            f"Files read: {reads['images_read']} images, {reads['labels_read']} label files; unchanged since an "
            f"earlier build, taken from the per-file record: {reads['images_from_record']} images, "
            f"{reads['labels_from_record']} label files."
        )
    written = report.get("label_files", {})
    if written:
        lines.append(
            f"Label files written: {written['written']}; hard links to an earlier build's equal label file: "
            f"{written['linked_from_earlier_builds']}."
        )
    if report.get("ultralytics_cache"):
        lines.append(f"Ultralytics label cache: {report['ultralytics_cache']}.")
    if report.get("balance"):
        lines += balance_markdown(report["balance"])
    lines.append("")
    if report["problem_examples"]:
        lines += ["## First problems", "", *[f"- {e}" for e in report["problem_examples"][:20]], ""]
    return "\n".join(lines)


def plot_class_distribution(report: dict[str, Any], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = ["train", "val", "test"]
    counts = {s: [0] * len(names) for s in splits}
    for by_split in report["boxes"].values():
        for split, by_class in by_split.items():
            for name, n in by_class.items():
                counts[split][names.index(name)] += n
    fig, ax = plt.subplots(figsize=(max(5, 1 + 0.7 * len(names)), 4))
    bottom = [0] * len(names)
    for split in splits:
        ax.bar(names, counts[split], bottom=bottom, label=split)
        bottom = [b + c for b, c in zip(bottom, counts[split], strict=True)]
    ax.set_ylabel("boxes")
    ax.set_title("Boxes per class and split")
    ax.legend()
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    save_figure_atomic(fig, path)


def draw_samples(
    samples: list[Sample], names: list[str], count: int, path: Path, tile: int = 224, seed: int = 0
) -> None:
    """A grid of up to `count` training images with their merged labels drawn, to eyeball correctness."""
    from PIL import Image, ImageDraw

    chosen = random.Random(seed).sample(samples, min(count, len(samples)))
    tiles = []
    for image_path, lines in chosen:
        with Image.open(image_path) as img:
            img = img.convert("RGB").resize((tile, tile))
        draw = ImageDraw.Draw(img)
        for line in lines:
            class_id, x, y, w, h = line.split()
            cid = int(class_id)
            colour = PALETTE[cid % len(PALETTE)]
            box = (
                (float(x) - float(w) / 2) * tile,
                (float(y) - float(h) / 2) * tile,
                (float(x) + float(w) / 2) * tile,
                (float(y) + float(h) / 2) * tile,
            )
            draw.rectangle(box, outline=colour, width=2)
            draw_label(draw, (box[0] + 2, box[1] + 2), names[cid], colour)
        tiles.append(img)
    sheet = tile_sheet(tiles, tile)
    write_atomic(path, lambda tmp: sheet.save(tmp, format="PNG"))


def tile_sheet(tiles: list[Any], tile: int, caption: str = "") -> Any:
    """Square `tile`-pixel images on a near-square grid, with an optional caption line above them; with no
    tiles, the caption alone on a strip wide enough for it."""
    from PIL import Image, ImageDraw

    font = label_font(CAPTION_PX)
    cols = max(1, int(len(tiles) ** 0.5 + 0.999))
    rows = (len(tiles) + cols - 1) // cols
    top = CAPTION_PX + 10 if caption else 0
    width = max(cols * tile, int(font.getlength(caption)) + 16 if caption else 0)
    sheet = Image.new("RGB", (width, rows * tile + top + (0 if tiles else 10)), (32, 32, 32))
    if caption:
        ImageDraw.Draw(sheet).text((8, 5), caption, fill=(255, 255, 255), font=font)
    for index, img in enumerate(tiles):
        sheet.paste(img, ((index % cols) * tile, top + (index // cols) * tile))
    return sheet


CAPTION_PX = 15
LABEL_PX = 13


def label_font(size: int = LABEL_PX) -> Any:
    """Pillow's own scalable font at `size` px (its default bitmap font is 10 px: unreadable on a tile)."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def draw_label(draw: Any, xy: tuple[float, float], text: str, colour: tuple[int, int, int]) -> None:
    """`text` in `colour` on a dark box at `xy` (a box's top-left corner), readable on any image; moved left as
    far as needed to stay whole on the image."""
    font = label_font()
    overflow = draw.textbbox(xy, text, font=font)[2] + 1 - draw.im.size[0]
    xy = (max(1.0, xy[0] - max(0, overflow)), xy[1])
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=(0, 0, 0))
    draw.text(xy, text, fill=colour, font=font)


def draw_samples_from_dataset(folder: Path, count: int, path: Path) -> None:
    """samples.png from a finished merged dataset (its train images and the labels written for them)."""
    from sentinel.dataset.sources.yolo_dir import class_names_of

    names = class_names_of(folder / "dataset.yaml")
    samples = []
    for image in sorted((folder / "images" / "train").iterdir()):
        label = folder / "labels" / "train" / f"{image.stem}.txt"
        samples.append((image, label.read_text().splitlines() if label.is_file() else []))
    if samples:
        draw_samples(samples, names, count, path)
