"""Config composition must stay cheap: `train.py --cfg job` against bare `import hydra, omegaconf`.

Prints the median of several alternating runs of each and their ratio (target ≤ 2.0).
Usage: python benchmarks/startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SENTINEL = [sys.executable, str(REPO / "train.py"), "--cfg", "job", "datasets=[coco,guns,knife,parcel]", "mode=tune"]
BASELINE = [sys.executable, "-c", "import hydra, omegaconf"]


def wall_time(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    wall_time(SENTINEL), wall_time(BASELINE)  # warm the file cache and .pyc files
    sentinel, baseline = [], []
    for _ in range(args.runs):
        sentinel.append(wall_time(SENTINEL))
        baseline.append(wall_time(BASELINE))
    s, b = statistics.median(sentinel), statistics.median(baseline)
    print(f"train.py --cfg job (4 datasets, mode=tune): median {s * 1000:.0f} ms over {args.runs} runs")
    print(f"python -c 'import hydra, omegaconf':        median {b * 1000:.0f} ms over {args.runs} runs")
    print(f"ratio: {s / b:.2f} (target <= 2.0)")


if __name__ == "__main__":
    main()
