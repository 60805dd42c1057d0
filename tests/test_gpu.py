"""GPU paths: run only where CUDA is (conftest skips `gpu` tests elsewhere, with that reason)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import run_train

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

TINY = ["experiment=demo", "model.imgsz=64", "merge.samples_grid=0", "hardware=gpu"]


def test_finetune_on_gpu_0(tmp_path):
    args = [
        *TINY,
        "mode=finetune",
        "model.epochs=2",
        "augmentation.close_mosaic=1",
        f"data_dir={tmp_path}/data",
        f"hydra.run.dir={tmp_path}/run",
    ]
    result = run_train(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "sentinel.pt").is_file()


def test_half_a_gpu_per_trial_packs_two_trials(tmp_path):
    args = [
        *TINY,
        "mode=tune",
        "tune.num_samples=2",
        "tune.epochs=2",
        "tune.grace_period=1",
        "hardware.gpu_per_trial=0.5",
        "hardware.cpu_per_trial=1",
        "hardware.max_concurrent_trials=2",
        f"data_dir={tmp_path}/data",
        f"hydra.run.dir={tmp_path}/run",
    ]
    result = run_train(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "run" / "tune" / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2
    (a, b) = sorted(trial_intervals(tmp_path / "run"))
    assert b[0] < a[1], (a, b)  # the second started before the first ended: both on the one GPU at once


def trial_intervals(run_dir: Path) -> list[tuple[float, float]]:
    """(start, end) of every trial from Ray's per-trial result.json (end of each epoch, its duration)."""
    intervals = []
    for result_file in (run_dir / "ray_tune").glob("*/result.json"):
        lines = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        intervals.append((lines[0]["timestamp"] - lines[0]["time_this_iter_s"], lines[-1]["timestamp"]))
    return intervals


@pytest.mark.parametrize("fmt", ["onnx", "engine"])
def test_export_on_the_gpu_loads_back_and_predicts(tmp_path, fmt):
    """ONNX and a TensorRT engine built on hardware.device; a missing onnx/tensorrt package fails with its name."""
    common = [*TINY, f"data_dir={tmp_path}/data"]
    result = run_train(
        [*common, "mode=finetune", "model.epochs=1", "augmentation.close_mosaic=0", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    args = [*common, "mode=export", f"export.formats=[{fmt}]", f"hydra.run.dir={tmp_path}/export"]
    result = run_train(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded back and predicted" in (tmp_path / "export" / "train.log").read_text()
