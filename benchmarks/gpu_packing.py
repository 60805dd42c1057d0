"""Packing trials on one GPU: the same search with two trials at a time on half a GPU each
(`hardware.gpu_per_trial=0.5`) against one trial at a time on the whole GPU (`gpu_per_trial=1`).

Same demo data, untrained YOLOv8n, trials, epochs, ASHA settings and seed on both sides; alternating runs,
medians. ASHA may stop different trials on each side, so throughput is trial-epochs trained per hour (from
tune/results.csv). Prints both and the ratio packed / whole (target >= 1.6). Needs a CUDA device; without
one it says so and measures nothing.
Usage: python benchmarks/gpu_packing.py [--trials 4] [--epochs 5] [--imgsz 320] [--runs 2]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

from _common import REPO, prepare_demo, run_timed, ultralytics_without_integrations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sentinel-gpu-packing-bench"))
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():  # `make bench` runs every benchmark: say so, and measure nothing
        print("gpu_packing: no CUDA device on this machine, nothing measured; run it where there is one")
        return
    common, _ = prepare_demo(args.workdir)
    ultralytics_without_integrations(args.workdir)
    packed, whole = [], []
    for run in range(args.runs):
        for share, concurrent, times in ((0.5, 2, packed), (1.0, 1, whole)):
            command = [
                *(sys.executable, str(REPO / "train.py"), "mode=tune", *common, "hardware=gpu", "tracking=none"),
                f"model.imgsz={args.imgsz}",
                f"tune.num_samples={args.trials}",
                f"tune.epochs={args.epochs}",
                "tune.grace_period=1",
                f"hardware.gpu_per_trial={share}",
                f"hardware.max_concurrent_trials={concurrent}",
                f"hydra.run.dir={args.workdir}/share{share}-run{run}",
            ]
            seconds = run_timed(command, args.workdir)[0]
            times.append(epochs_trained(args.workdir / f"share{share}-run{run}") * 3600 / seconds)
    p, w = statistics.median(packed), statistics.median(whole)
    name = torch.cuda.get_device_name(0)
    print(f"{name}: {args.trials} trials x {args.epochs} epochs, demo data, YOLOv8n untrained, {args.imgsz} px")
    print(f"two trials at once, 0.5 GPU each: median {p:.0f} trial-epochs/hour  {[round(x) for x in packed]}")
    print(f"one trial at a time, 1 GPU:       median {w:.0f} trial-epochs/hour  {[round(x) for x in whole]}")
    print(f"throughput ratio packed / whole: {p / w:.2f} (target >= 1.6)")


def epochs_trained(run_dir: Path) -> int:
    with open(run_dir / "tune" / "results.csv") as handle:
        return sum(int(row["epochs"]) for row in csv.DictReader(handle))


if __name__ == "__main__":
    main()
