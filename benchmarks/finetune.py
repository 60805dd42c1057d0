"""Framework overhead of fine-tuning: `train.py mode=finetune` against plain `yolo detect train` on the same
tiny model, data and epochs. Prints both medians over alternating runs and their ratio (target <= 1.05).
Usage: python benchmarks/finetune.py [--epochs 20] [--runs 3] [--workdir /tmp/sentinel-finetune-bench]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from _common import REPO, prepare_demo, run_timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sentinel-finetune-bench"))
    args = parser.parse_args()
    common, data = prepare_demo(args.workdir)
    yolo = str(Path(sys.executable).parent / "yolo")
    ours, theirs = [], []
    for run in range(args.runs):
        ours.append(
            run_timed(
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
            run_timed(
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
    ours, theirs = [seconds for seconds, _ in ours], [seconds for seconds, _ in theirs]
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"demo data, YOLOv8n untrained, 64 px, {args.epochs} epochs, {args.runs} alternating runs each")
    print(f"yolo detect train:        median {t:.1f} s  {[round(x, 1) for x in theirs]}")
    print(f"train.py mode=finetune:   median {o:.1f} s  {[round(x, 1) for x in ours]}")
    print(f"wall-time ratio Sentinel / yolo: {o / t:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
