"""Does evening out classes help the rare one? The rare class's AP50 on the test split of a demo variant with a
10:1 imbalance in training boxes, fine-tuned with merge.balance=none, merge.balance=oversample, and
training.class_weights=1 (Ultralytics' cls_pw), at equal epochs, over several seeds; medians printed.

The variant is two demo sources: one drawing only persons (100 training images), one only guns (12; a demo
image holds 0 to 3 objects), so the training split has about ten person boxes per gun box; val and test have
both. Each fine-tune then runs mode=evaluate on test. There is no target: the table says what it shows, even
when nothing helps.
Usage: python benchmarks/balance.py [--epochs 40] [--seeds 3] [--workdir /tmp/sentinel-balance-bench]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import yaml
from _common import REPO, run_timed

VARIANTS = {
    "none": [],
    "oversample": ["merge.balance=oversample", "merge.balance_target_ratio=1.5"],
    "cls_pw=1": ["training.class_weights=1.0"],
}
RARE = "gun"

DATASETS = """# @package datasets
defaults:
  - /sentinel/source/demo@persons
  - /sentinel/source/demo@guns
  - _self_
persons: {layout: fiftyone, names: [person], seed: 11, imgsz: 96, train: 100, val: 12, test: 20}
guns: {layout: roboflow, names: [gun], seed: 12, imgsz: 96, train: 12, val: 12, test: 20}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sentinel-balance-bench"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    (args.workdir / "conf" / "datasets").mkdir(parents=True)
    (args.workdir / "conf" / "datasets" / "imbalanced.yaml").write_text(DATASETS)
    common = [
        f"hydra.searchpath=[file://{args.workdir / 'conf'}]",
        "datasets=[imbalanced]",
        "model=yolov8n_scratch",
        "model.imgsz=64",
        "model.batch=16",
        f"model.epochs={args.epochs}",
        f"model.patience={args.epochs}",
        "hardware=cpu",
        "tracking=none",
        "merge.samples_grid=0",
        f"data_dir={args.workdir}/data",
    ]
    ap50: dict[str, list[float]] = {name: [] for name in VARIANTS}
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    balance: dict[str, dict] = {}
    for seed in range(args.seeds):
        for name, overrides in VARIANTS.items():  # alternating: every variant once per seed
            run = args.workdir / f"{name.replace('=', '')}-{seed}"
            train = [sys.executable, str(REPO / "train.py"), *common, *overrides, f"seed={seed}"]
            elapsed, _ = run_timed([*train, "mode=finetune", f"hydra.run.dir={run}/ft"], args.workdir)
            weights = f"evaluate.weights={run}/ft"
            run_timed([*train, "mode=evaluate", weights, f"hydra.run.dir={run}/ev"], args.workdir)
            metrics = json.loads((run / "ev" / "metrics.json").read_text())
            ap50[name].append(next(r["ap50"] for r in metrics["classes"] if r["class"] == RARE))
            seconds[name].append(elapsed)
            data = yaml.safe_load((run / "ft" / "finetune_args.yaml").read_text())["data"]
            balance[name] = json.loads((Path(data).parent / "report" / "prep_report.json").read_text())["balance"]
    report(args, ap50, seconds, balance)


def report(args: argparse.Namespace, ap50: dict, seconds: dict, balance: dict) -> None:
    before = balance["none"]
    print(
        f"demo variant: training boxes {before['per_class']} (ratio {before['ratio']:.1f}:1); "
        f"{args.epochs} epochs at 64 px, YOLOv8n untrained, seeds 0..{args.seeds - 1}"
    )
    over = balance["oversample"]["oversample"]
    print(f"oversample: {over['listed_images']} images listed, ratio reached {over['ratio']:.2f}")
    print(f"| variant | {RARE} AP50 on test (median) | per seed | fine-tune wall (median s) |")
    print("|---|---|---|---|")
    for name in VARIANTS:
        runs = ", ".join(f"{v:.3f}" for v in ap50[name])
        print(f"| {name} | {statistics.median(ap50[name]):.3f} | {runs} | {statistics.median(seconds[name]):.0f} |")


if __name__ == "__main__":
    main()
