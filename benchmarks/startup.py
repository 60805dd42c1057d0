"""Config composition must stay cheap: `train.py --cfg job` against a minimal Hydra app on the same config tree.

The baseline is what any Hydra user pays: a bare `@hydra.main` app composing a copy of conf/ with the same
groups, options and keys, minus Sentinel's typed schemas (ConfigStore). The ratio is therefore Sentinel's
own overhead: schemas checked while composing, the CLI wrapper, and train.py's imports (target ≤ 1.3).
`import hydra, omegaconf` alone is printed for reference. Medians of alternating runs.
Usage: python benchmarks/startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["--cfg", "job", "datasets=[coco,guns,knife,parcel]", "mode=tune"]
SENTINEL = [sys.executable, str(REPO / "train.py"), *OVERRIDES]
BARE_IMPORT = [sys.executable, "-c", "import hydra, omegaconf"]
MINIMAL_APP = """
import hydra

@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    pass

main()
"""


def minimal_app(folder: Path) -> list[str]:
    """A plain Hydra app over a copy of conf/ without the references to Sentinel's ConfigStore schemas."""
    shutil.copytree(REPO / "conf", folder / "conf")
    for path in (folder / "conf").rglob("*.yaml"):
        text = re.sub(r"^\s*- (sentinel_schema|/sentinel/source/\w+@\w+)\s*$\n", "", path.read_text(), flags=re.M)
        path.write_text(text)
    (folder / "app.py").write_text(MINIMAL_APP)
    return [sys.executable, str(folder / "app.py"), *OVERRIDES]


def wall_time(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        commands = {"sentinel": SENTINEL, "minimal": minimal_app(Path(scratch)), "import": BARE_IMPORT}
        for command in commands.values():
            wall_time(command)  # warm the file cache and .pyc files
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, command in commands.items():
                times[name].append(wall_time(command))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"train.py --cfg job (4 datasets, mode=tune):   median {median['sentinel'] * 1000:.0f} ms")
    print(f"minimal @hydra.main app, same config tree:    median {median['minimal'] * 1000:.0f} ms")
    print(f"python -c 'import hydra, omegaconf' (ref.):   median {median['import'] * 1000:.0f} ms")
    print(f"ratio sentinel / minimal app: {median['sentinel'] / median['minimal']:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
