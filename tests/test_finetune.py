"""finetune, export, evaluate and mode=all on the demo data with real Ultralytics training (tiny, CPU)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import run_train, start_train

pytestmark = pytest.mark.slow

TINY = [
    "experiment=demo",
    "model.imgsz=64",
    "model.epochs=2",
    "model.patience=2",
    "tune.epochs=2",
    "tune.grace_period=1",
    "tune.num_samples=2",
    "hardware.num_cpus=2",
    "merge.samples_grid=0",
]


def train(tmp_path: Path, *args: str, run: str | None = None) -> subprocess.CompletedProcess:
    run_dir = [f"hydra.run.dir={tmp_path / run}"] if run else []
    result = run_train([*TINY, f"data_dir={tmp_path}/data", *run_dir, *args], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def tuned_and_finetuned(tmp_path_factory):
    """A small tune run, then a fine-tune that takes its values from it."""
    tmp_path = tmp_path_factory.mktemp("finetune")
    train(tmp_path, "mode=tune", run="tune")
    train(tmp_path, "mode=finetune", f"finetune.hparams_from={tmp_path / 'tune'}", run="ft")
    return tmp_path


def test_finetune_uses_exactly_the_tuned_values(tuned_and_finetuned):
    best = yaml.safe_load((tuned_and_finetuned / "tune" / "best_hparams.yaml").read_text())
    used = yaml.safe_load((tuned_and_finetuned / "ft" / "finetune" / "args.yaml").read_text())  # Ultralytics' own
    assert best and {k: used[k] for k in best} == pytest.approx(best)
    recorded = yaml.safe_load((tuned_and_finetuned / "ft" / "finetune_args.yaml").read_text())
    assert recorded["hparams_from"].endswith("tune/best_hparams.yaml") and recorded["args"]["lr0"] == best["lr0"]
    assert (tuned_and_finetuned / "ft" / "sentinel.pt").is_file()


def test_evaluate_table_equals_ultralytics_val(tuned_and_finetuned):
    from ultralytics import YOLO

    tmp_path = tuned_and_finetuned
    weights = tmp_path / "ft" / "sentinel.pt"
    train(tmp_path, "mode=evaluate", f"evaluate.weights={weights}", run="eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    data = json.loads((tmp_path / "ft" / "finetune_result.json").read_text())
    dataset_yaml = yaml.safe_load((tmp_path / "ft" / "finetune_args.yaml").read_text())["data"]
    assert metrics["split"] == "test" and data["weights"] == str(weights)
    theirs = YOLO(str(weights)).val(
        data=dataset_yaml,
        split="test",
        imgsz=64,
        batch=16,
        device="cpu",
        plots=False,
        workers=0,
        verbose=False,
        project=str(tmp_path / "val"),
    )
    assert metrics["means"] == pytest.approx(
        {
            "mp": theirs.box.mp,
            "mr": theirs.box.mr,
            "map50-95": theirs.box.map,
            "map50": theirs.box.map50,
            "map75": theirs.box.map75,
        }
    )
    assert [row["ap50-95"] for row in metrics["classes"]] == pytest.approx(list(theirs.box.ap))
    assert (tmp_path / "eval" / "metrics.md").is_file() and (tmp_path / "eval" / "confusion_matrix.png").is_file()


def test_compare_to_adds_differences(tuned_and_finetuned):
    tmp_path = tuned_and_finetuned
    weights = tmp_path / "ft" / "sentinel.pt"
    train(tmp_path, "mode=evaluate", f"evaluate.weights={weights}", run="eval_a")
    train(
        tmp_path,
        "mode=evaluate",
        f"evaluate.weights={weights}",
        f"evaluate.compare_to={tmp_path / 'eval_a'}",
        run="eval_b",
    )
    metrics = json.loads((tmp_path / "eval_b" / "metrics.json").read_text())
    assert metrics["means_diff"] == pytest.approx(dict.fromkeys(metrics["means_diff"], 0.0))  # same model, same data


def test_export_loads_and_predicts(tuned_and_finetuned):
    tmp_path = tuned_and_finetuned
    formats = ["torchscript"] + (
        ["onnx"] if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime") else []
    )
    train(
        tmp_path,
        "mode=export",
        f"export.weights={tmp_path / 'ft'}",
        f"export.formats=[{','.join(formats)}]",
        run="export",
    )
    files = json.loads((tmp_path / "export" / "export_result.json").read_text())["files"]
    assert sorted(files) == sorted(formats) and all(Path(p).exists() for p in files.values())


def test_export_format_with_missing_package_fails_first(tuned_and_finetuned, tmp_path):
    result = run_train(
        [
            *TINY,
            "mode=export",
            f"export.weights={tuned_and_finetuned / 'ft'}",
            "export.formats=[coreml]",
            f"data_dir={tmp_path}/data",
            f"hydra.run.dir={tmp_path}/run",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "pip install coremltools" in result.stderr
    assert not (tmp_path / "run" / "export").exists()


def test_mode_all_runs_every_stage_then_skips_them_all(tmp_path):
    first = train(tmp_path, "mode=all", run="all1")
    for name in (
        "prep_report.md",
        "best_hparams.yaml",
        "tune_report.md",
        "sentinel.pt",
        "export/sentinel.torchscript",
        "metrics.json",
        "metrics.md",
    ):
        assert (tmp_path / "all1" / name).exists(), name
    assert "(already done" not in first.stdout
    started = time.monotonic()
    second = train(tmp_path, "mode=all", run="all2")
    lines = [line for line in second.stdout.splitlines() if line.startswith("  ")]
    assert len(lines) == 5 and all("(already done: reused)" in line for line in lines), lines
    assert not (tmp_path / "all2" / "ray_tune").exists() and not (tmp_path / "all2" / "finetune").exists()
    assert (tmp_path / "all2" / "metrics.json").read_text() == (tmp_path / "all1" / "metrics.json").read_text()
    assert time.monotonic() - started < 60


def test_killed_finetune_resumes_from_its_last_checkpoint(tmp_path):
    args = [*TINY, "mode=finetune", "model.epochs=8", "model.patience=8", f"data_dir={tmp_path}/data"]
    process = start_train(args, cwd=tmp_path)
    deadline = time.time() + 300
    results = None
    while time.time() < deadline:
        found = list(tmp_path.glob("outputs/*/*/finetune/results.csv"))
        if found and len(found[0].read_text().splitlines()) >= 3:  # header + 2 epochs done, last.pt saved
            results = found[0]
            break
        time.sleep(0.3)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert results is not None, "training did not get 2 epochs in"
    epochs_before = len(results.read_text().splitlines()) - 1
    assert epochs_before < 8 and not list(tmp_path.glob("outputs/*/*/sentinel.pt"))
    time.sleep(1.1)  # a new Hydra run folder (the time has one-second resolution)

    result = run_train([*args, "finetune.resume=true"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finetune: resuming" in result.stdout + result.stderr
    epochs = [int(float(line.split(",")[0])) for line in results.read_text().splitlines()[1:]]
    # The same training went on to its 8 epochs from its last checkpoint; it did not start again at epoch 1.
    assert set(epochs) == set(range(1, 9)) and epochs.count(1) == 1
    assert len(list(tmp_path.glob("outputs/*/*/sentinel.pt"))) == 1
