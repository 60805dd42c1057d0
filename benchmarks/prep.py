"""Prep speed against what a user could do instead, on generated sources (four, as in the seed notebook).

Baselines, on the same source tree:
- `cp -al`: the same placement work as prep's hard links (one link per image and per label file);
- `cp -r`: copying the tree;
- a floor, printed for reference with no target: `cp -al` of the images plus a new file for every label
  (read, then written under a new name, one process): the least any merge that rewrites labels into one
  class space must do. Unlike links, every new file is a new inode, and on this machine's ext4 creating one
  costs 25 to 500 µs of kernel time, varying tenfold between runs: the floor shows how much of a build that is.
- FiftyOne: each split imported as YOLOv5Dataset, `merge_samples`, exported as YOLOv5 with
  `export_media="symlink"` (what a FiftyOne user would do; it runs on the mongod the set-up installs).
Sentinel's build in every figure validates every image (decodes, not truncated), hashes it for duplicates
and leaks, parses every label and writes Ultralytics' label cache.

Nothing is deleted while timing, nor between timed runs: every timed run writes a folder of its own, and all
of them are removed when the benchmark ends. On ext4, creating a file within minutes of many being deleted
costs up to ten times more: the inode allocator skips every inode freed in the last 5 minutes (300 s while the
inode table block is dirty, as it is all through a build; fs/ext4/ialloc.c, `recently_deleted`), so each new
file walks past the ones just freed. When each run first deleted the previous run's output, that search
(`perf record -g`: `recently_deleted` under `find_inode_bit`) made a 20k build take 6 to 12 s and the floor
1.6 to 6 s from one run to the next, and only on the sides that create files (Sentinel, the floor, FiftyOne's
export), never on `cp -al`, which creates no file inode. For the same reason a benchmark started within 5
minutes of the end of the last one (which removed its outputs) waits out the rest of those 5 minutes first.

Sections (each figure is the median of alternating runs, printed with its target):
- tiny:      20,000 32-px JPEGs — first build ÷ FiftyOne (speed-up ≥ 10), ÷ `cp -al` (≤ 4); cached rerun
             ÷ first build (≤ 0.02); incremental rebuild after an alias change ÷ first build (≤ 0.10).
- realistic: 5,000 640×480 JPEGs of 50–100 KB — first build ÷ `cp -r` (≤ 0.5), incremental ÷ first build.
- scaling:   first builds at 2k, 20k, 100k tiny images, each in a fresh process: images per second (flat:
             100k's rate ≥ 0.8 × 2k's) and peak memory (100k under 1 GB).
Usage: python benchmarks/prep.py [--sections tiny,realistic,scaling] [--runs 3] [--workdir /tmp/sentinel-bench]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

SOURCES = {"alpha": ["person", "gun"], "beta": ["Person", "knife"], "gamma": ["parcel"], "delta": ["Gun", "Knife"]}
REALISTIC_BYTES = (50_000, 100_000)
HERE = Path(__file__).resolve().parent


def tiny_jpeg(source_index: int, index: int) -> bytes:
    """A unique 32x32 JPEG: colour and one pixel encode (source, index), so no two images are equal."""
    from PIL import Image

    image = Image.new("RGB", (32, 32), (index & 255, (index >> 8) & 255, 40 * source_index))
    image.putpixel((index % 32, (index // 32) % 32), (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class RealisticJpegs:
    """640x480 photos-like JPEGs of 50–100 KB: a noisy texture per source, a unique block per image."""

    def __init__(self) -> None:
        import numpy as np

        rng = np.random.default_rng(0)
        ramp = np.linspace(0, 200, 640, dtype=np.float32)[None, :, None]
        self.textures = [
            np.clip(ramp + rng.normal(0, 18, (480, 640, 3)) + 12 * s, 0, 255).astype(np.uint8) for s in range(4)
        ]

    def __call__(self, source_index: int, index: int) -> bytes:
        import cv2

        image = self.textures[source_index].copy()
        y, x = divmod(index, 64)
        image[(y % 48) * 10 : (y % 48) * 10 + 10, x * 10 : x * 10 + 10] = (index * 7) % 256
        image[0, :24] = [[(index >> (8 * (k % 3))) & 255] * 3 for k in range(24)]
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 75])
        assert ok and REALISTIC_BYTES[0] <= len(data) <= REALISTIC_BYTES[1], len(data)
        return data.tobytes()


def generate(root: Path, total: int, kind: str = "tiny") -> list[Path]:
    """Four sources with `total` images in all (80/10/10 split), reused when already there."""
    per_source = -(-total // len(SOURCES))
    make = RealisticJpegs() if kind == "realistic" else tiny_jpeg
    folders = []
    for s, (name, names) in enumerate(SOURCES.items()):
        folder = root / name
        folders.append(folder)
        if (folder / "dataset.yaml").is_file():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        for split in ("train", "val", "test"):
            (folder / "images" / split).mkdir(parents=True)
            (folder / "labels" / split).mkdir(parents=True)
        for i in range(per_source):
            split = "train" if i % 10 < 8 else "val" if i % 10 == 8 else "test"
            (folder / "images" / split / f"{i:06d}.jpg").write_bytes(make(s, i))
            (folder / "labels" / split / f"{i:06d}.txt").write_text(unique_label(i, len(names)))
        lines = ["train: images/train", "val: images/val", "test: images/test", f"names: {names}"]
        (folder / "dataset.yaml").write_text("\n".join(lines) + "\n")
    return folders


def unique_label(index: int, classes: int) -> str:
    """A label line no other image has (as in real data: a build cannot share one file among equal labels)."""
    x, y = 0.3 + (index % 1000) / 5000, 0.3 + (index // 1000 % 1000) / 5000
    return f"{index % classes} {x:.6f} {y:.6f} 0.25 0.25\n"


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


EXT4_RECENTLY_DELETED_S = 300  # fs/ext4/ialloc.c RECENTCY_DIRTY: how long a freed inode is skipped


class Outputs:
    """A new folder for each timed run, all removed together at the end (see the module docstring: why)."""

    def __init__(self, workdir: Path) -> None:
        self.root = workdir / "outputs"
        self.removed_at = workdir / "outputs-removed-at"  # when the last benchmark removed its outputs
        self.count = 0

    def settle(self) -> None:
        """Before the first timed run: remove what a crashed run left, then wait until no removal is recent."""
        if self.root.exists():
            self.remove_all()
        if not self.removed_at.is_file():
            return
        wait = float(self.removed_at.read_text()) + EXT4_RECENTLY_DELETED_S - time.time()
        if wait > 0:
            print(f"waiting {wait:.0f} s: the last benchmark removed its outputs less than 5 minutes ago, and new")
            print("files would be slower to create until then (ext4's recently deleted inodes; see --help)")
            time.sleep(wait)

    def new(self, name: str) -> Path:
        self.count += 1
        folder = self.root / f"{os.getpid()}-{self.count}-{name}"
        assert not folder.exists(), folder
        return folder

    def remove_all(self) -> None:
        """This benchmark's folders (after its last timed run), or those a crashed one left (before its first)."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.removed_at.write_text(str(time.time()))


class Prep:
    """Sentinel's merge of `folders` into a new data_dir per first build, as mode=prep runs it (minus Hydra)."""

    def __init__(self, folders: list[Path], outputs: Outputs) -> None:
        from sentinel.config.schema import MergeConfig

        self.folders, self.outputs = folders, outputs
        self.data_dir = outputs.new("data")
        self.cfg = MergeConfig()  # as the pipeline hands it to prep
        self.rebuilds = 0

    def merge(self, cfg=None):
        from sentinel.dataset.merge import merge_sources
        from sentinel.dataset.sources.yolo_dir import read_source

        return merge_sources([read_source(f.name, f) for f in self.folders], cfg or self.cfg, self.data_dir)

    def new_data_dir(self) -> None:
        """Untimed: the next first build starts from nothing (no merged folder, no per-file record)."""
        self.data_dir = self.outputs.new("data")

    def first_build(self):
        """A build from nothing, into the data_dir of `new_data_dir`."""
        assert not self.data_dir.exists()
        return self.merge()

    def cached(self) -> None:
        assert self.merge().cache_hit

    def incremental(self) -> None:
        """Only merge options change (a new alias each time): a new folder, from the per-file record."""
        import dataclasses

        self.rebuilds += 1
        result = self.merge(dataclasses.replace(self.cfg, aliases={"parcel": f"parcel{self.rebuilds}"}))
        assert not result.cache_hit and result.report["file_records"]["images_read"] == 0


def copy_tree(source: Path, target: Path, *flags: str) -> None:
    """`cp FLAGS source target` into a target that does not exist yet."""
    assert not target.exists(), target
    subprocess.run(["cp", *flags, str(source), str(target)], check=True)


def link_images_write_labels(folders: list[Path], target: Path) -> None:
    """The floor: `cp -al` of every source's images, and each label file read and written as a new file."""
    for folder in folders:
        out = target / folder.name
        out.mkdir(parents=True)
        subprocess.run(["cp", "-al", str(folder / "images"), str(out / "images")], check=True)
        for split in ("train", "val", "test"):
            labels, written = folder / "labels" / split, out / "labels" / split
            written.mkdir(parents=True)
            for entry in os.scandir(labels):
                with open(entry.path, "rb") as source, open(written / entry.name, "xb") as new:
                    new.write(source.read())


FIFTYONE = """
import json, os, sys, time
import fiftyone as fo
sources, export_dir = json.loads(sys.argv[1]), sys.argv[2]
started = time.perf_counter()
merged = fo.Dataset()
for folder in sources:
    for split in ("train", "val", "test"):
        part = fo.Dataset.from_dir(dataset_dir=folder, dataset_type=fo.types.YOLOv5Dataset, split=split,
                                   yaml_path=os.path.join(folder, "dataset.yaml"), tags=split)
        merged.merge_samples(part)
        part.delete()
classes = merged.distinct("ground_truth.detections.label")
for split in ("train", "val", "test"):
    merged.match_tags(split).export(export_dir=export_dir, dataset_type=fo.types.YOLOv5Dataset, split=split,
                                    label_field="ground_truth", export_media="symlink", classes=classes)
print("SECONDS=" + json.dumps(time.perf_counter() - started))
merged.delete()
"""


def fiftyone_merge(folders: list[Path], workdir: Path, export_dir: Path) -> float:
    """The FiftyOne path's own time (its imports and mongod start-up excluded, like Sentinel's warm runs)."""
    env = {"FIFTYONE_DATABASE_DIR": str(workdir / "fiftyone-db"), "FIFTYONE_DO_NOT_TRACK": "true"}
    result = subprocess.run(
        [sys.executable, "-c", FIFTYONE, json.dumps([str(f) for f in folders]), str(export_dir)],
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.exit(f"the FiftyOne baseline failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.rsplit("SECONDS=", 1)[1].split()[0])


def median(values: list[float]) -> float:
    return statistics.median(values)


def show(name: str, value: float, target: str, met: bool) -> None:
    print(f"  {name:<44} {value:8.3f}   target {target:<8} {'met' if met else 'NOT MET'}")


def tiny_section(workdir: Path, runs: int, outputs: Outputs) -> None:
    folders = generate(workdir / "tiny", 20_000)
    prep = Prep(folders, outputs)
    images = prep.first_build().report["totals"]["kept"]  # warm-up: imports, page cache
    prep.incremental()
    fiftyone_merge(folders, workdir, outputs.new("fiftyone"))  # warm-up of FiftyOne's database files
    build, cp_al, floor, cached, incremental, fiftyone = [], [], [], [], [], []
    for _ in range(runs):
        prep.new_data_dir()
        build.append(timed(prep.first_build))
        cp_al.append(timed(partial(copy_tree, workdir / "tiny", outputs.new("cp-al"), "-al")))
        floor.append(timed(partial(link_images_write_labels, folders, outputs.new("floor"))))
        cached.append(timed(prep.cached))
        incremental.append(timed(prep.incremental))
        fiftyone.append(fiftyone_merge(folders, workdir, outputs.new("fiftyone")))
    b = median(build)
    print(f"tiny: {images} images of 32 px in 4 sources, {runs} alternating runs, medians")
    print(f"  first build {b:.2f} s, cp -al {median(cp_al):.2f} s, FiftyOne {median(fiftyone):.2f} s, ", end="")
    print(f"cached rerun {median(cached) * 1000:.0f} ms, incremental {median(incremental):.2f} s")
    show("FiftyOne path / first build (speed-up)", median(fiftyone) / b, ">= 10", median(fiftyone) / b >= 10)
    show("first build / cp -al", b / median(cp_al), "<= 4", b / median(cp_al) <= 4)
    print(f"  for reference: cp -al of the images + every label written anew {median(floor):.2f} s; first build")
    print(f"  / that floor {b / median(floor):.2f}; the floor / cp -al {median(floor) / median(cp_al):.2f}")
    show("cached rerun / first build", median(cached) / b, "<= 0.02", median(cached) / b <= 0.02)
    show("incremental rebuild / first build", median(incremental) / b, "<= 0.10", median(incremental) / b <= 0.10)
    print(f"  images per second, first build: {images / b:.0f}")
    print(f"  runs (s): build {rounded(build)} cp -al {rounded(cp_al)} incremental {rounded(incremental)}")
    print(f"            floor {rounded(floor)} FiftyOne {rounded(fiftyone)}")


def realistic_section(workdir: Path, runs: int, outputs: Outputs) -> None:
    folders = generate(workdir / "realistic", 5_000, "realistic")
    prep = Prep(folders, outputs)
    images = prep.first_build().report["totals"]["kept"]
    build, cp_r, incremental = [], [], []
    for _ in range(runs):
        prep.new_data_dir()
        build.append(timed(prep.first_build))
        cp_r.append(timed(partial(copy_tree, workdir / "realistic", outputs.new("cp-r"), "-r")))
        incremental.append(timed(prep.incremental))
    b = median(build)
    size = sum(p.stat().st_size for p in (workdir / "realistic").rglob("*.jpg")) / 2**20
    print(f"realistic: {images} JPEGs of 640x480 ({size:.0f} MiB), {runs} alternating runs, medians")
    print(f"  first build {b:.2f} s, cp -r {median(cp_r):.2f} s, incremental {median(incremental):.2f} s")
    show("first build / cp -r", b / median(cp_r), "<= 0.5", b / median(cp_r) <= 0.5)
    show("incremental rebuild / first build", median(incremental) / b, "<= 0.10", median(incremental) / b <= 0.10)
    print(f"  images per second, first build: {images / b:.0f}")
    print(f"  runs (s): build {rounded(build)} cp -r {rounded(cp_r)} incremental {rounded(incremental)}")


SCALING_CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
from prep import Outputs, Prep
from pathlib import Path
outputs = Outputs(Path(sys.argv[2]))
prep = Prep(sorted(Path(sys.argv[1]).glob("*/")), outputs)
import sentinel.dataset.merge  # imports are not the build's cost (prep imports no torch: ultra_cache.CACHE_VERSION)
import threading, psutil
worker_peak = [0]
def watch_workers():  # the forkserver and its workers are not our waited-for children: read their VmHWM
    me = psutil.Process()
    while True:
        for child in me.children(recursive=True):
            try:
                with open(f"/proc/{child.pid}/status") as status:
                    hwm = next(line for line in status if line.startswith("VmHWM:"))
                worker_peak[0] = max(worker_peak[0], int(hwm.split()[1]) * 1024)
            except (OSError, StopIteration):
                pass
        time.sleep(0.1)
threading.Thread(target=watch_workers, daemon=True).start()
started = time.perf_counter()
images = prep.first_build().report["totals"]["kept"]
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT=" + json.dumps([images, seconds, peak, worker_peak[0]]))
"""


def scaling_section(workdir: Path, runs: int, outputs: Outputs) -> None:
    print("scaling: first build in a fresh process per run; peak memory of that process (imports included) and")
    print("         of its largest worker process (the forkserver included), sampled every 0.1 s")
    rates = {}
    for total in (2_000, 20_000, 100_000):
        root = workdir / f"scale-{total}"
        generate(root, total)
        results = []
        for _ in range(runs):
            command = [sys.executable, "-c", SCALING_CHILD, str(root), str(workdir), str(HERE)]
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"scaling run failed:\n{out.stderr[-3000:]}")
            results.append(json.loads(out.stdout.rsplit("RESULT=", 1)[1]))
        images = results[0][0]
        seconds, peak = median([r[1] for r in results]), max(r[2] for r in results)
        worker_peak = max(r[3] for r in results)
        rates[total] = images / seconds
        rate, mib, worker_mib = rates[total], peak / 2**20, worker_peak / 2**20
        print(f"  {images:>7} images: {seconds:7.2f} s, {rate:6.0f} images/s, peak memory {mib:5.0f} MiB", end="")
        print(f" (largest worker process: {worker_mib:.0f} MiB)" if worker_mib else " (threads: no worker process)")
    flat = rates[100_000] / rates[2_000]
    show("images/s at 100k / at 2k", flat, ">= 0.8", flat >= 0.8)
    show("peak memory at 100k (GiB), build process", peak / 2**30, "< 1", peak < 2**30)
    show("peak memory at 100k (GiB), a worker", worker_peak / 2**30, "< 1", worker_peak < 2**30)


def rounded(values: list[float]) -> list[float]:
    return [round(v, 2) for v in values]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="tiny,realistic,scaling")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sentinel-bench"))
    args = parser.parse_args()
    sections = {"tiny": tiny_section, "realistic": realistic_section, "scaling": scaling_section}
    args.workdir.mkdir(parents=True, exist_ok=True)
    outputs = Outputs(args.workdir)
    outputs.settle()
    try:
        for name in args.sections.split(","):
            sections[name](args.workdir, args.runs, outputs)
    finally:
        outputs.remove_all()


if __name__ == "__main__":
    main()
