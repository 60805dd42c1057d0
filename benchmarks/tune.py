"""Same tuning budget through Ultralytics' `model.tune(use_ray=True)` and through Sentinel's mode=tune.

Both get the demo data (prepared once), an untrained YOLOv8n at 64 px, the demo search space, the same
number of trials and epochs, ASHA with the same grace period, and the same CPU count. Prints both wall
times, their ratio Sentinel / Ultralytics (target <= 0.6 on 2 cores) and both best mAP50-95.
Usage: python benchmarks/tune.py [--trials 4] [--epochs 3] [--workdir /tmp/sentinel-tune-bench]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from _common import REPO, prepare_demo, run_timed, ultralytics_without_integrations

METRIC = "metrics/mAP50-95(B)"

ULTRALYTICS = """
import json, sys
from ray import tune
from ultralytics import YOLO
data, trials, epochs, project = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
space = {"lr0": tune.loguniform(1e-3, 1e-1), "fliplr": tune.uniform(0.0, 1.0), "mosaic": tune.choice([0.0, 1.0])}
grid = YOLO("yolov8n.yaml").tune(data=data, use_ray=True, space=space, iterations=trials, epochs=epochs,
                                 grace_period=1, imgsz=64, batch=16, workers=0, device="cpu", plots=False,
                                 project=project, name="tune", seed=0)
best = max((r.metrics_dataframe["metrics/mAP50-95(B)"].max() for r in grid if r.metrics_dataframe is not None
            and "metrics/mAP50-95(B)" in r.metrics_dataframe), default=float("nan"))
print("BEST=" + json.dumps(float(best)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sentinel-tune-bench"))
    args = parser.parse_args()
    common, data = prepare_demo(args.workdir)
    ultralytics_without_integrations(args.workdir)  # model.tune would also log every trial to MLflow

    ours, _ = run_timed(
        [
            sys.executable,
            str(REPO / "train.py"),
            "mode=tune",
            *common,
            f"hydra.run.dir={args.workdir}/ours",
            f"tune.num_samples={args.trials}",
            f"tune.epochs={args.epochs}",
            "tune.grace_period=1",
            f"tune.metric='{METRIC}'",
            "tune.mode=max",
            "hardware.cpu_per_trial=1",
            "hardware.max_concurrent_trials=2",
        ],
        args.workdir,
    )
    theirs, out = run_timed(
        [
            sys.executable,
            "-c",
            ULTRALYTICS,
            data,
            str(args.trials),
            str(args.epochs),
            str(args.workdir / "ultralytics"),
        ],
        args.workdir,
    )
    with open(args.workdir / "ours" / "tune" / "results.csv") as handle:
        our_best = max(float(row["best_metric"]) for row in csv.DictReader(handle))
    their_best = float(out.split("BEST=")[-1].strip())
    cpus = os.cpu_count()
    print(f"budget: {args.trials} trials x {args.epochs} epochs, demo data, YOLOv8n untrained, 64 px, {cpus} CPUs")
    print(f"Ultralytics model.tune(use_ray=True): {theirs:.1f} s, best {METRIC} {their_best:.4f}")
    print(f"Sentinel mode=tune:                   {ours:.1f} s, best {METRIC} {our_best:.4f}")
    print(f"wall-time ratio Sentinel / Ultralytics: {ours / theirs:.2f} (target <= 0.6)")


if __name__ == "__main__":
    main()
