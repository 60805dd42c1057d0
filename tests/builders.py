"""Build small YOLO datasets on disk for tests, in the layouts real exports use."""

from __future__ import annotations

import csv
import hashlib
import io
import random
from pathlib import Path

import yaml


def jpeg_bytes(seed: int, size: int = 32) -> bytes:
    """A small, valid, unique JPEG (content depends on `seed`)."""
    from PIL import Image

    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    image.putpixel((rng.randrange(size), rng.randrange(size)), (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def png_bytes(seed: int, size: int = 32) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (seed % 256, 10, 20)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_source(
    root: Path,
    names: list[str] | dict[int, str],
    splits: dict[str, dict[str, tuple[bytes, str | None]]],
    layout: str = "fiftyone",
) -> Path:
    """Write a YOLO dataset: splits = {split: {file name: (image bytes, label text or None)}}.

    layout "fiftyone": images/<split>/, labels/<split>/, dataset.yaml with a names dict-or-list;
    layout "roboflow": <split>/images, <split>/labels (val as "valid"), data.yaml with ../ paths.
    """
    root.mkdir(parents=True, exist_ok=True)
    folder = {"train": "train", "val": "valid", "test": "test"}
    data: dict[str, object] = {}
    for split, files in splits.items():
        if layout == "roboflow":
            image_dir, label_dir = root / folder[split] / "images", root / folder[split] / "labels"
            data[split] = f"../{folder[split]}/images"
        else:
            image_dir, label_dir = root / "images" / split, root / "labels" / split
            data[split] = f"images/{split}"
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        for name, (image, label) in files.items():
            (image_dir / name).write_bytes(image)
            if label is not None:
                (label_dir / Path(name).with_suffix(".txt")).write_text(label)
    data["names"] = names
    (root / ("data.yaml" if layout == "roboflow" else "dataset.yaml")).write_text(yaml.safe_dump(data))
    return root


def tree_digest(root: Path) -> dict[str, str]:
    """Path → content hash of every file under root, plus modes: proves a tree was not touched."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() + f":{p.stat().st_mode:o}"
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def ultralytics_dataset(dataset_yaml: Path, split: str):
    """Ultralytics' own dataset for a split, built as training builds it (it loads or writes labels/<split>.cache)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(dataset_yaml))
    cfg = get_cfg(overrides={"imgsz": 64, "cache": False, "single_cls": False, "task": "detect"})
    return build_yolo_dataset(cfg, data[split], batch=2, data=data, mode="val")


def last_epoch_rate(results_csv: Path, applied: dict) -> tuple[float, float]:
    """The weights' learning rate in the last row of Ultralytics' results.csv, and lr0 × the linear schedule's
    factor at that epoch (warm-up, capped at epochs - 1, is over by then)."""
    with open(results_csv) as handle:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(handle)]
    epoch, epochs, lrf = int(rows[-1]["epoch"]) - 1, len(rows), applied["lrf"]
    return float(rows[-1]["lr/pg1"]), applied["lr0"] * ((1 - epoch / epochs) * (1 - lrf) + lrf)


def write_video(path: Path, image: Path, frames: int, fps: float = 25.0, shift_every: int = 6) -> Path:
    """An MJPG video of `frames` frames: `image` sliding right one pixel every `shift_every` frames, so the
    objects in it stay in view and move a little, as a camera sees them."""
    import cv2
    import numpy as np

    still = cv2.imread(str(image))
    height, width = still.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for i in range(frames):
        writer.write(np.roll(still, i // shift_every, axis=1))
    writer.release()
    return path
