"""Built-in demo data: small synthetic detection datasets laid out like the exports users meet.

Each class name is drawn as its own shape and colour (chosen from the normalised name, so "Gun" and "gun"
look alike in every source), on a noisy background, 0–3 objects per image. Same config and seed, same
bytes. Layouts:
- roboflow: train/ valid/ test/ each with images/ and labels/, and a data.yaml whose paths are
  `../train/images`, one level too high, as Roboflow writes them (roboflow-python#240);
- fiftyone: images/{train,val,test} and labels/{...}, dataset.yaml with a `names` dict and a `path`,
  as FiftyOne's YOLOv5Dataset exporter writes them.
"""

from __future__ import annotations

import random
import zlib
from pathlib import Path

import yaml

from sentinel.config.schema import DemoSource
from sentinel.dataset.classes import normalise

SHAPES = ("rectangle", "ellipse", "triangle", "cross")
SPLIT_FOLDERS = {"roboflow": {"train": "train", "val": "valid", "test": "test"}}


def generate_demo(cfg: DemoSource, out_dir: Path, final_dir: Path) -> None:
    """Write the demo dataset described by `cfg` (a DemoSource) into the empty folder `out_dir`, which will
    be renamed to `final_dir` (the absolute `path` FiftyOne's layout records)."""
    rng = random.Random(cfg.seed)
    counts = {"train": cfg.train, "val": cfg.val, "test": cfg.test}
    for split, count in counts.items():
        image_dir, label_dir = _split_dirs(out_dir, cfg.layout, split)
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            stem = f"img_{index:05d}"  # the same file names in every source, on purpose
            image, lines = _draw_image(rng, list(cfg.names), cfg.imgsz)
            image.save(image_dir / f"{stem}.jpg", quality=90)
            (label_dir / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines))
    _write_yaml(out_dir, final_dir, cfg.layout, list(cfg.names))


def _split_dirs(root: Path, layout: str, split: str) -> tuple[Path, Path]:
    if layout == "roboflow":
        folder = root / SPLIT_FOLDERS["roboflow"][split]
        return folder / "images", folder / "labels"
    return root / "images" / split, root / "labels" / split


def _write_yaml(root: Path, final_dir: Path, layout: str, names: list[str]) -> None:
    if layout == "roboflow":
        data = {
            "train": "../train/images",
            "val": "../valid/images",
            "test": "../test/images",
            "nc": len(names),
            "names": names,
            "roboflow": {"workspace": "sentinel-demo", "project": "demo", "version": 1, "license": "CC BY 4.0"},
        }
        (root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    else:
        data = {
            "path": str(final_dir),
            "train": "./images/train/",
            "val": "./images/val/",
            "test": "./images/test/",
            "names": dict(enumerate(names)),
        }
        (root / "dataset.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def _style(name: str) -> tuple[str, tuple[int, int, int]]:
    """Shape and colour of a class, fixed by its normalised name."""
    code = zlib.crc32(normalise(name).encode())
    shape = SHAPES[code % len(SHAPES)]
    colour = (60 + code % 180, 60 + (code >> 8) % 180, 60 + (code >> 16) % 180)
    return shape, colour


def _draw_image(rng: random.Random, names: list[str], size: int):  # -> tuple[PIL.Image.Image, list[str]]
    from PIL import Image, ImageDraw

    base = rng.randint(20, 90)
    image = Image.effect_noise((size, size), rng.uniform(8, 30)).point(lambda v: min(255, v // 3 + base))
    image = Image.merge("RGB", (image, image, image))
    draw = ImageDraw.Draw(image)
    lines = []
    for _ in range(rng.choice((0, 1, 1, 2, 2, 3))):
        class_id = rng.randrange(len(names))
        w, h = rng.uniform(0.2, 0.45) * size, rng.uniform(0.2, 0.45) * size
        x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
        _draw_shape(draw, *_style(names[class_id]), (x0, y0, x0 + w, y0 + h))
        cx, cy = (x0 + w / 2) / size, (y0 + h / 2) / size
        lines.append(f"{class_id} {cx:.6f} {cy:.6f} {w / size:.6f} {h / size:.6f}")
    return image, lines


def _draw_shape(draw, shape: str, colour: tuple[int, int, int], box: tuple[float, float, float, float]) -> None:
    x0, y0, x1, y1 = box
    if shape == "rectangle":
        draw.rectangle(box, fill=colour)
    elif shape == "ellipse":
        draw.ellipse(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(x0, y1), ((x0 + x1) / 2, y0), (x1, y1)], fill=colour)
    else:
        w, h = (x1 - x0) / 3, (y1 - y0) / 3
        draw.rectangle((x0 + w, y0, x1 - w, y1), fill=colour)
        draw.rectangle((x0, y0 + h, x1, y1 - h), fill=colour)
