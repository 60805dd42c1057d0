"""Prep speed on four generated sources of at least 20,000 small labelled images in all.

Prints, each the median of alternating runs (this machine's disk is noisy, so runs alternate):
- first build ÷ `cp -r` of the same sources (target ≤ 0.5),
- bytes of image data copied by the build (target 0 on one filesystem),
- cached rerun ÷ first build (target ≤ 0.02),
- images per second of a first build.
Usage: python benchmarks/prep.py [--images 20000] [--runs 5] [--workdir /tmp/sentinel-bench]
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from omegaconf import OmegaConf
from PIL import Image

from sentinel.merge import merge_sources
from sentinel.schema import MergeConfig
from sentinel.sources.yolo_dir import read_source

SOURCES = {"alpha": ["person", "gun"], "beta": ["Person", "knife"], "gamma": ["parcel"], "delta": ["Gun", "Knife"]}


def tiny_jpeg(source_index: int, index: int) -> bytes:
    """A unique 32x32 JPEG: colour and one pixel encode (source, index), so no two images are equal."""
    image = Image.new("RGB", (32, 32), (index & 255, (index >> 8) & 255, 40 * source_index))
    image.putpixel((index % 32, (index // 32) % 32), (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def generate(root: Path, total: int) -> list[Path]:
    per_source = total // len(SOURCES) + 1
    folders = []
    for s, (name, names) in enumerate(SOURCES.items()):
        folder = root / name
        folders.append(folder)
        if (folder / "dataset.yaml").is_file():
            continue
        for split in ("train", "val", "test"):
            (folder / "images" / split).mkdir(parents=True, exist_ok=True)
            (folder / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(per_source):
            split = "train" if i % 10 < 8 else "val" if i % 10 == 8 else "test"
            (folder / "images" / split / f"{i:06d}.jpg").write_bytes(tiny_jpeg(s, i))
            (folder / "labels" / split / f"{i:06d}.txt").write_text(f"{i % len(names)} 0.5 0.5 0.25 0.25\n")
        lines = ["train: images/train", "val: images/val", "test: images/test", f"names: {names}"]
        (folder / "dataset.yaml").write_text("\n".join(lines) + "\n")
    return folders


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sentinel-bench"))
    args = parser.parse_args()
    folders = generate(args.workdir / "sources", args.images)
    cfg = OmegaConf.structured(MergeConfig)
    data_dir = args.workdir / "data"

    def build():
        shutil.rmtree(data_dir, ignore_errors=True)
        sources = [read_source(f.name, f) for f in folders]
        return merge_sources(sources, cfg, data_dir)

    def cached():
        result = merge_sources([read_source(f.name, f) for f in folders], cfg, data_dir)
        assert result.cache_hit

    def copy():
        target = args.workdir / "copy"
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run(["cp", "-r", str(args.workdir / "sources"), str(target)], check=True)

    result = build()  # warm-up: imports, matplotlib font cache, page cache
    images = result.report["totals"]["kept"]
    builds, copies, reruns = [], [], []
    for _ in range(args.runs):
        builds.append(timed(build))
        copies.append(timed(copy))
        reruns.append(timed(cached))
    result = merge_sources([read_source(f.name, f) for f in folders], cfg, data_dir)
    b, c, r = statistics.median(builds), statistics.median(copies), statistics.median(reruns)
    print(f"sources: {len(folders)}, images: {images}, runs: {args.runs} (alternating)")
    print(f"first build: median {b:.2f} s   cp -r: median {c:.2f} s   cached rerun: median {r * 1000:.0f} ms")
    print(f"first build / cp -r:       {b / c:.2f} (target <= 0.5)")
    print(
        f"bytes of images copied:    {result.report['bytes_copied']} (target 0); placement {result.report['placement']}"
    )
    print(f"cached rerun / first build: {r / b:.3f} (target <= 0.02)")
    print(f"images per second (first build): {images / b:.0f}")
    print(f"all builds (s): {[round(x, 2) for x in builds]}; cp -r (s): {[round(x, 2) for x in copies]}")


if __name__ == "__main__":
    main()
