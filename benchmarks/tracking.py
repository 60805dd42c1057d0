"""A short command must stay short with tracking on: what the default MLflow tracking adds to a command's wall time.

The command is a cached `experiment=demo mode=prep` (the prep is built once first), run alternately with
`tracking=none` and with the default local MLflow store; medians of the alternating runs. Before each run the
previous run's tracking service is let finish (it records after train.py has exited), so no run pays for the
one before it. Also printed: how long until MLflow has the run (train.py's exit + the service's remainder),
and the same command with `tracking.wait=true` (what train.py waiting for MLflow would cost).
Target: tracking adds at most 0.5 s to the command's wall time.
Usage: python benchmarks/tracking.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from _common import ENV  # noqa: E402

TARGET_S = 0.5


def command(workdir: Path, *extra: str) -> list[str]:
    base = [sys.executable, str(REPO / "train.py"), "experiment=demo", "mode=prep", "merge.samples_grid=0"]
    return [*base, f"data_dir={workdir}/data", *extra]


def recorded(workdir: Path, timeout_s: float = 120.0) -> None:
    """Wait until no run is still being recorded after its train.py ended (sentinel.runtime.tracking.pending)."""
    from sentinel.runtime.tracking.pending import wait_for_live_services

    left = wait_for_live_services(workdir / "outputs", timeout_s)
    if left:
        sys.exit(f"runs still being recorded after {timeout_s:g} s: {left}")


def timed(workdir: Path, args: list[str]) -> tuple[float, float]:
    """train.py's wall time (its output to /dev/null: a pipe would wait for the service that holds it), and
    the time until its run is recorded."""
    started = time.perf_counter()
    subprocess.run(args, cwd=workdir, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ended = time.perf_counter() - started
    recorded(workdir)
    return ended, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        variants = {
            "none": command(workdir, "tracking=none"),
            "mlflow": command(workdir),
            "mlflow_wait": command(workdir, "tracking.wait=true"),
        }
        for name in variants:  # the prep's build, the store's creation, warm file cache and .pyc files
            timed(workdir, variants[name])
        times: dict[str, list[float]] = {name: [] for name in variants}
        until_recorded: list[float] = []
        for _ in range(args.runs):
            for name, argv in variants.items():
                wall, done = timed(workdir, argv)
                times[name].append(wall)
                if name == "mlflow":
                    until_recorded.append(done)
    median = {name: statistics.median(values) for name, values in times.items()}
    added = median["mlflow"] - median["none"]
    print(f"cached mode=prep, tracking=none:               median {median['none']:.2f} s")
    print(f"cached mode=prep, MLflow (default):            median {median['mlflow']:.2f} s")
    print(f"  ... until MLflow has the run:                median {statistics.median(until_recorded):.2f} s")
    print(f"cached mode=prep, MLflow, tracking.wait=true:  median {median['mlflow_wait']:.2f} s")
    print(f"ratio MLflow / none: {median['mlflow'] / median['none']:.2f}; added {added:.2f} s (target <= {TARGET_S} s)")


if __name__ == "__main__":
    main()
