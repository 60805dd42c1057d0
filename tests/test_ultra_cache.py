"""Prep writes Ultralytics' label cache in Ultralytics' own format, so training loads it instead of scanning."""

from __future__ import annotations

import io
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from builders import jpeg_bytes, make_source, png_bytes, ultralytics_dataset
from sentinel.config.schema import MergeConfig
from sentinel.dataset.merge import merge_sources
from sentinel.dataset.sources.yolo_dir import read_source


def rotated_jpeg(seed: int) -> bytes:
    """A 48x32 JPEG whose EXIF says "rotate 90°": Ultralytics reports it as 32 wide, 48 high."""
    from PIL import Image

    image = Image.new("RGB", (48, 32), (seed % 256, 50, 90))
    exif = Image.Exif()
    exif[274] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


@pytest.fixture
def merged(tmp_path):
    """Boxes, a background, two boxes equal after rounding, PNG, a rotated JPEG, odd sizes, two sources."""
    a = make_source(
        tmp_path / "src" / "a",
        ["person", "gun"],
        {
            "train": {
                "boxes.jpg": (jpeg_bytes(1, size=40), "0 0.5 0.5 0.2 0.2\n1 0.25 0.25 0.1 0.3\n"),
                "background.jpg": (jpeg_bytes(2), ""),
                "rounding.jpg": (jpeg_bytes(3), "0 0.5 0.5 0.2 0.2\n0 0.5000001 0.5 0.2 0.2\n"),
                "plain.png": (png_bytes(4, size=24), "1 0.5 0.5 0.5 0.5\n"),
                "rotated.jpg": (rotated_jpeg(5), "0 0.3 0.6 0.2 0.4\n"),
            },
            "val": {"v.jpg": (jpeg_bytes(6, size=56), "1 0.5 0.5 0.3 0.3\n")},
        },
    )
    b = make_source(tmp_path / "src" / "b", ["knife"], {"train": {"k.jpg": (jpeg_bytes(7), "0 0.4 0.4 0.2 0.2\n")}})
    cfg = OmegaConf.structured(MergeConfig)
    return merge_sources([read_source("a", a), read_source("b", b)], cfg, tmp_path / "d")


def load_cache(path: Path) -> dict:
    return np.load(path, allow_pickle=True).item()


def same_labels(ours: list[dict], theirs: list[dict]) -> None:
    assert [lb["im_file"] for lb in ours] == [lb["im_file"] for lb in theirs]
    for mine, reference in zip(ours, theirs, strict=True):
        assert set(mine) == set(reference), mine["im_file"]
        for key, value in reference.items():
            if isinstance(value, np.ndarray):
                assert mine[key].dtype == value.dtype and mine[key].shape == value.shape, (mine["im_file"], key)
                assert np.array_equal(mine[key], value), (mine["im_file"], key)
            else:
                assert mine[key] == value, (mine["im_file"], key)


def test_prep_writes_the_cache_ultralytics_would_write(merged, tmp_path):
    """Our cache equals the one Ultralytics' own scan writes for the same folder: a format drift fails here."""
    assert merged.report["ultralytics_cache"] == {"train": "written", "val": "written"}
    for split in ("train", "val"):
        ours = load_cache(merged.folder / "labels" / f"{split}.cache")
        dataset = ultralytics_dataset(merged.dataset_yaml, split)
        reference = dataset.cache_labels(tmp_path / f"reference-{split}.cache")  # a full scan, written elsewhere
        assert ours["version"] == reference["version"]
        assert ours["hash"] == reference["hash"] == dataset.get_cache_hash()
        assert ours["results"] == reference["results"] and ours["msgs"] == reference["msgs"] == []
        same_labels(ours["labels"], reference["labels"])
    shapes = {
        Path(lb["im_file"]).name: lb["shape"] for lb in load_cache(merged.folder / "labels/train.cache")["labels"]
    }
    assert shapes["a__rotated.jpg"] == (48, 32) and shapes["a__plain.png"] == (24, 24)  # (height, width)


def test_ultralytics_loads_the_cache_without_scanning(merged, caplog):
    cache = merged.folder / "labels" / "train.cache"
    before = (cache.stat().st_mtime_ns, cache.read_bytes())
    caplog.set_level(logging.INFO, logger="ultralytics")
    dataset = ultralytics_dataset(merged.dataset_yaml, "train")
    assert len(dataset.labels) == 6
    assert "New cache created" not in caplog.text  # it did not scan and write its own
    assert (cache.stat().st_mtime_ns, cache.read_bytes()) == before


def test_a_split_with_a_jpeg_ultralytics_repairs_gets_no_cache(tmp_path):
    """Ultralytics' scan re-saves a JPEG without its end marker and says so: a cache would hide that."""
    root = make_source(
        tmp_path / "src" / "s",
        ["a"],
        {
            "train": {"ok.jpg": (jpeg_bytes(1), "0 0.5 0.5 0.2 0.2\n")},
            "val": {"no_eoi.jpg": (jpeg_bytes(2) + b"junk", "0 0.5 0.5 0.2 0.2\n")},
        },
    )
    result = merge_sources([read_source("s", root)], OmegaConf.structured(MergeConfig), tmp_path / "d")
    assert result.report["ultralytics_cache"]["train"] == "written"
    assert result.report["ultralytics_cache"]["val"].startswith("none")
    assert not (result.folder / "labels" / "val.cache").exists()


def test_a_moved_dataset_is_rescanned_not_misread(merged, tmp_path, caplog):
    """The cache names absolute paths; Ultralytics rejects it after a move (its hash) and scans afresh."""
    moved = tmp_path / "moved"
    shutil.copytree(merged.folder, moved, symlinks=True)
    text = (moved / "dataset.yaml").read_text().replace(str(merged.folder), str(moved))
    (moved / "dataset.yaml").write_text(text)
    caplog.set_level(logging.INFO, logger="ultralytics")
    dataset = ultralytics_dataset(moved / "dataset.yaml", "train")
    assert all(lb["im_file"].startswith(str(moved) + os.sep) for lb in dataset.labels)
    assert "New cache created" in caplog.text


def test_prep_without_exif_images_does_not_import_torch(tmp_path):
    """Writing the cache needs no Ultralytics import: torch is most of a big build's memory (issue 14)."""
    import subprocess
    import sys

    make_source(
        tmp_path / "src" / "a",
        ["person"],
        {
            "train": {"x.jpg": (jpeg_bytes(1), "0 0.5 0.5 0.2 0.2\n")},
            "val": {"y.jpg": (jpeg_bytes(2), "0 0.4 0.4 0.2 0.2\n")},
        },
    )
    script = (
        "import sys\n"
        "from omegaconf import OmegaConf\n"
        "from pathlib import Path\n"
        "from sentinel.dataset.merge import merge_sources\n"
        "from sentinel.config.schema import MergeConfig\n"
        "from sentinel.dataset.sources.yolo_dir import read_source\n"
        "if __name__ == '__main__':\n"
        f"    r = merge_sources([read_source('a', Path({str(tmp_path / 'src' / 'a')!r}))], "
        f"OmegaConf.structured(MergeConfig), Path({str(tmp_path / 'd')!r}))\n"
        "    print(r.report['ultralytics_cache'], 'torch' in sys.modules, 'ultralytics' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "{'train': 'written', 'val': 'written'} False False"
