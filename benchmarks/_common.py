"""What the tune and finetune benchmarks share: a quiet offline environment, timing a command, and the demo
dataset prepared once through train.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "YOLO_OFFLINE": "1"}


def run_timed(command: list[str], cwd: Path) -> tuple[float, str]:
    """Wall time and stdout of `command`; exits with its stderr when it fails."""
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return elapsed, result.stdout


def prepare_demo(workdir: Path) -> tuple[list[str], str]:
    """A fresh workdir with the demo data merged; returns the overrides to reuse it and its dataset.yaml."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    common = [f"data_dir={workdir}/data", "experiment=demo", "model.imgsz=64", "merge.samples_grid=0"]
    run_timed([sys.executable, str(REPO / "train.py"), "mode=prep", *common, f"hydra.run.dir={workdir}/prep"], workdir)
    return common, json.loads((workdir / "prep" / "prep_result.json").read_text())["dataset_yaml"]


def ultralytics_without_integrations(workdir: Path) -> None:
    """Run every command with an Ultralytics settings file of the benchmark's own, with its MLflow callback off.

    `yolo detect train` would otherwise log each run to MLflow (it switches itself on when mlflow is
    installed); the Sentinel side it is compared with runs tracking=none. The user's own settings file is
    left alone.
    """
    ENV["YOLO_CONFIG_DIR"] = str(workdir / "ultralytics-settings")
    code = "from ultralytics.utils import SETTINGS; SETTINGS.update({'mlflow': False})"
    run_timed([sys.executable, "-c", code], workdir)
