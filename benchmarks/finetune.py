"""Framework overhead of fine-tuning: `train.py mode=finetune` against plain `yolo detect train` on the same
tiny model, data and epochs. Prints both medians over alternating runs and their ratio (target <= 1.05).
Usage: python benchmarks/finetune.py [--epochs 20] [--runs 3] [--workdir /tmp/sentinel-finetune-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "YOLO_OFFLINE": "1"}


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sentinel-finetune-bench"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    common = [f"data_dir={args.workdir}/data", "experiment=demo", "model.imgsz=64", "merge.samples_grid=0"]
    timed(
        [sys.executable, str(REPO / "train.py"), "mode=prep", *common, f"hydra.run.dir={args.workdir}/prep"],
        args.workdir,
    )
    data = json.loads((args.workdir / "prep" / "prep_result.json").read_text())["dataset_yaml"]
    yolo = str(Path(sys.executable).parent / "yolo")
    ours, theirs = [], []
    for run in range(args.runs):
        ours.append(
            timed(
                [
                    sys.executable,
                    str(REPO / "train.py"),
                    "mode=finetune",
                    *common,
                    f"model.epochs={args.epochs}",
                    f"model.patience={args.epochs}",
                    f"hydra.run.dir={args.workdir}/ours{run}",
                ],
                args.workdir,
            )
        )
        theirs.append(
            timed(
                [
                    yolo,
                    "detect",
                    "train",
                    f"data={data}",
                    "model=yolov8n.yaml",
                    f"epochs={args.epochs}",
                    f"patience={args.epochs}",
                    "imgsz=64",
                    "batch=16",
                    "workers=0",
                    "device=cpu",
                    "seed=0",
                    f"project={args.workdir}/yolo",
                    f"name=run{run}",
                ],
                args.workdir,
            )
        )
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"demo data, YOLOv8n untrained, 64 px, {args.epochs} epochs, {args.runs} alternating runs each")
    print(f"yolo detect train:        median {t:.1f} s  {[round(x, 1) for x in theirs]}")
    print(f"train.py mode=finetune:   median {o:.1f} s  {[round(x, 1) for x in ours]}")
    print(f"wall-time ratio Sentinel / yolo: {o / t:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
