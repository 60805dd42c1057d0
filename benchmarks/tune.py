"""Same tuning budget through Ultralytics' `model.tune(use_ray=True)` and through Sentinel's mode=tune.

Both get the demo data (prepared once), an untrained YOLOv8n at 64 px, one search space (lr0 in 1e-3..1e-1,
fliplr, mosaic) and one optimizer (SGD: Sentinel's default; Ultralytics' auto would ignore lr0), the same
number of trials and epochs, ASHA with the same grace period, and the same concurrency: Ultralytics asks
min(8, max(1, cpus - 1)) CPUs per trial, 1 on this 2-core machine, so both run two 1-CPU trials at once.
Neither side tracks: Ultralytics' MLflow callback is off (its own settings file here), Sentinel runs tracking=none.
Runs alternate (Ultralytics, Sentinel, ...); prints the medians, their ratio Sentinel / Ultralytics (target
<= 0.6), both best mAP50-95, and each side's per-trial overhead: a trial's wall time (Ray's time_total_s at
its last report) minus the time its epochs took (the time between reports; the first epoch, whose report
also carries the trial's set-up, counted as the median epoch), as a share of the trial's wall time
(target <= 10%).
Usage: python benchmarks/tune.py [--trials 4] [--epochs 3] [--runs 3] [--workdir /tmp/sentinel-tune-bench]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
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
                                 project=project, name="tune", seed=0, optimizer="SGD")
best = max((r.metrics_dataframe["metrics/mAP50-95(B)"].max() for r in grid if r.metrics_dataframe is not None
            and "metrics/mAP50-95(B)" in r.metrics_dataframe), default=float("nan"))
print("BEST=" + json.dumps(float(best)))
"""


def trial_overheads(folder: Path) -> list[tuple[float, float]]:
    """(wall s, overhead s) of each trial whose Ray progress.csv is under `folder`."""
    trials = []
    for progress in folder.rglob("progress.csv"):
        with open(progress) as handle:
            rows = list(csv.DictReader(handle))
        if len(rows) < 2:
            continue  # stopped by ASHA after one epoch: no epoch time to compare the first one with
        iterations = [float(row["time_this_iter_s"]) for row in rows]
        epoch = statistics.median(iterations[1:])
        wall = float(rows[-1]["time_total_s"])
        trials.append((wall, wall - epoch * len(rows)))
    return trials


def overhead_line(name: str, trials: list[tuple[float, float]]) -> str:
    if not trials:
        return f"{name}: no trial with two or more epochs"
    share = statistics.median(overhead / wall for wall, overhead in trials)
    seconds = statistics.median(overhead for _, overhead in trials)
    verdict = "met" if share <= 0.10 else "NOT MET"
    return f"{name}: median {seconds:.2f} s of {len(trials)} trials, {share:.1%} of a trial (target <= 10%) {verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sentinel-tune-bench"))
    args = parser.parse_args()
    common, data = prepare_demo(args.workdir)
    ultralytics_without_integrations(args.workdir)  # model.tune would also log every trial to MLflow
    ours, theirs, our_best, their_best, our_trials, their_trials = [], [], [], [], [], []
    for run in range(args.runs):
        project = args.workdir / f"ultralytics-{run}"
        seconds, out = run_timed(
            [sys.executable, "-c", ULTRALYTICS, data, str(args.trials), str(args.epochs), str(project)], args.workdir
        )
        theirs.append(seconds)
        their_best.append(float(out.split("BEST=")[-1].strip()))
        their_trials += trial_overheads(project)
        run_dir = args.workdir / f"ours-{run}"
        seconds, _ = run_timed(
            [
                sys.executable,
                str(REPO / "train.py"),
                "mode=tune",
                *common,
                "tracking=none",  # like the Ultralytics side, whose MLflow callback is off (see _common.py)
                f"hydra.run.dir={run_dir}",
                f"tune.num_samples={args.trials}",
                f"tune.epochs={args.epochs}",
                "tune.grace_period=1",
                f"tune.metric='{METRIC}'",
                *("search_space.lr0.low=1e-3", "search_space.lr0.high=1e-1"),  # the Ultralytics side's space
                "tune.mode=max",
                "hardware.cpu_per_trial=1",
                "hardware.max_concurrent_trials=2",
            ],
            args.workdir,
        )
        ours.append(seconds)
        with open(run_dir / "tune" / "results.csv") as handle:
            our_best.append(max(float(row["best_metric"]) for row in csv.DictReader(handle)))
        our_trials += trial_overheads(run_dir)
    median = statistics.median
    cpus = os.cpu_count()
    print(f"budget: {args.trials} trials x {args.epochs} epochs, demo data, YOLOv8n untrained, 64 px, {cpus} CPUs")
    print(f"{args.runs} alternating runs per side, medians")
    print(f"Ultralytics model.tune(use_ray=True): {median(theirs):.1f} s, best {METRIC} {median(their_best):.4f}")
    print(f"Sentinel mode=tune:                   {median(ours):.1f} s, best {METRIC} {median(our_best):.4f}")
    ratio = median(ours) / median(theirs)
    print(f"wall-time ratio Sentinel / Ultralytics: {ratio:.2f} (target <= 0.6) {'met' if ratio <= 0.6 else 'NOT MET'}")
    print(overhead_line("per-trial overhead, Ultralytics", their_trials))
    print(overhead_line("per-trial overhead, Sentinel   ", our_trials))
    print(f"runs (s): Ultralytics {[round(x, 1) for x in theirs]}, Sentinel {[round(x, 1) for x in ours]}")


if __name__ == "__main__":
    main()
