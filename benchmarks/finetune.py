"""Framework overhead of fine-tuning: `train.py mode=finetune` against plain `yolo detect train` on the same
tiny model, data and epochs (target <= 1.02), and the cost of tracking: the same fine-tune with tracking=mlflow
(the local SQLite store) against tracking=none (target <= 2% of wall time). Medians over alternating runs.
Usage: python benchmarks/finetune.py [--epochs 20] [--runs 3] [--workdir /tmp/sentinel-finetune-bench]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from _common import REPO, prepare_demo, run_timed, ultralytics_without_integrations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sentinel-finetune-bench"))
    args = parser.parse_args()
    common, data = prepare_demo(args.workdir)
    ultralytics_without_integrations(args.workdir)
    yolo = str(Path(sys.executable).parent / "yolo")
    ours, tracked, theirs = [], [], []
    for run in range(args.runs):
        for tracking, times in (("none", ours), ("mlflow", tracked)):
            command = [sys.executable, str(REPO / "train.py"), "mode=finetune", *common, f"tracking={tracking}"]
            command += [f"model.epochs={args.epochs}", f"model.patience={args.epochs}"]
            times.append(run_timed([*command, f"hydra.run.dir={args.workdir}/{tracking}{run}"], args.workdir))
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
    ours, tracked, theirs = ([seconds for seconds, _ in side] for side in (ours, tracked, theirs))
    o, m, t = statistics.median(ours), statistics.median(tracked), statistics.median(theirs)
    print(f"demo data, YOLOv8n untrained, 64 px, {args.epochs} epochs, {args.runs} alternating runs each")
    print(f"yolo detect train:                   median {t:.1f} s  {[round(x, 1) for x in theirs]}")
    print(f"train.py mode=finetune tracking=none:  median {o:.1f} s  {[round(x, 1) for x in ours]}")
    print(f"train.py mode=finetune tracking=mlflow: median {m:.1f} s  {[round(x, 1) for x in tracked]}")
    print(f"wall-time ratio Sentinel (tracking=none) / yolo: {o / t:.3f} (target <= 1.02)")
    print(f"tracking overhead (mlflow - none) / none: {(m - o) / o:+.1%} (target <= 2%)")
    print_time_in_tracking(args.workdir, args.runs, args.epochs, m)


def print_time_in_tracking(workdir: Path, runs: int, epochs: int, tracked_wall_s: float) -> None:
    """What the tracked runs' tracking service did beside the training, and how long train.py waited for it
    at the end (tracking.json): less noisy than a difference of wall times."""
    spent = [json.loads((workdir / f"mlflow{run}" / "tracking.json").read_text())["seconds"] for run in range(runs)]
    start = statistics.median(s["start"] for s in spent)
    logging = statistics.median(s["logging"] for s in spent)
    waited = statistics.median(s["train_py_waited"] for s in spent)
    print(
        f"tracking service: median {start:.2f} s opening the run (importing MLflow, opening its store) and "
        f"{logging:.2f} s logging {epochs} epochs and the run folder, beside the training"
    )
    print(f"train.py waited for it at the end: median {waited:.2f} s = {waited / tracked_wall_s:.1%} of a tracked run")


if __name__ == "__main__":
    main()
