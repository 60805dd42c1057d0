"""finetune, export, evaluate and mode=all on the demo data with real Ultralytics training (tiny, CPU)."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest
import yaml

from builders import last_epoch_rate
from conftest import TINY, kill_process_tree, run_train, start_train, train_tiny

pytestmark = pytest.mark.slow

# tiny_project (conftest): the session's fine-tune as long as `make demo`'s (`ft_longer`: mAP50 about 0.8 there,
# measurably better than 2 epochs' mAP 0), then a small search (`tune`) and a fine-tune that takes its values from
# it (`ft`, latest: the newest fine-tune). The tests here check those runs and add their own beside them.


def test_finetune_uses_exactly_the_tuned_values(tiny_project):
    best = yaml.safe_load((tiny_project / "tune" / "best_hparams.yaml").read_text())
    used = yaml.safe_load((tiny_project / "ft" / "finetune" / "args.yaml").read_text())  # Ultralytics' own
    assert best and {k: used[k] for k in best} == pytest.approx(best)
    recorded = yaml.safe_load((tiny_project / "ft" / "finetune_args.yaml").read_text())
    assert recorded["hparams_from"].endswith("tune/best_hparams.yaml") and recorded["args"]["lr0"] == best["lr0"]
    assert (tiny_project / "ft" / "sentinel.pt").is_file()


def test_two_fine_tunes_with_two_rates_train_with_those_rates(tiny_project):
    best = yaml.safe_load((tiny_project / "tune" / "best_hparams.yaml").read_text())
    rates = {}
    for run, lr0 in (("ft", best["lr0"]), ("ft_longer", 0.01)):  # tuned, then Ultralytics' own default
        record = yaml.safe_load((tiny_project / run / "applied_args.yaml").read_text())
        assert record["differences"] == [] and record["applied"]["optimizer"] == "SGD"
        assert record["applied"]["lr0"] == pytest.approx(lr0)  # read back from the optimizer
        used, predicted = last_epoch_rate(tiny_project / run / "finetune" / "results.csv", record["applied"])
        assert used == pytest.approx(predicted, rel=1e-3)
        rates[run] = used
        log = (tiny_project / run / "train.log").read_text()
        assert "ignoring 'lr0" not in log
    assert rates["ft"] != pytest.approx(rates["ft_longer"])
    progress = (tiny_project / "ft_longer" / "train.log").read_text()  # what the console showed
    assert re.search(r"finetune: epoch 1/40: .*; about \d+ (s|min) left", progress)
    card = (tiny_project / "ft" / "model_card.md").read_text()
    assert "The values Ultralytics applied" in card and f"lr0: {best['lr0']}" in card


def test_evaluate_table_equals_ultralytics_val(tiny_project):
    from ultralytics import YOLO

    tmp_path = tiny_project
    weights = tmp_path / "ft" / "sentinel.pt"
    train_tiny(tmp_path, "mode=evaluate", f"evaluate.weights={weights}", run="eval")
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


def test_compare_to_latest_gives_the_differences_of_two_checkpoints(tiny_project):
    tmp_path = tiny_project
    train_tiny(tmp_path, "mode=evaluate", f"evaluate.weights={tmp_path / 'ft_longer'}", run="eval_a")
    train_tiny(tmp_path, "mode=evaluate", "evaluate.weights=latest", "evaluate.compare_to=latest", run="eval_b")
    a = json.loads((tmp_path / "eval_a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "eval_b" / "metrics.json").read_text())
    assert a["weights"] == str(tmp_path / "ft_longer" / "sentinel.pt")
    assert b["weights"] == str(tmp_path / "ft" / "sentinel.pt")  # latest: the newest fine-tune
    assert b["compared_to"] == a["weights"]  # latest: the newest evaluation before this one
    assert b["means_diff"] == pytest.approx({k: b["means"][k] - a["means"][k] for k in b["means"]})
    assert any(abs(v) > 0 for v in b["means_diff"].values())  # two different models, not a self-comparison
    before = {row["class"]: row["ap50-95"] for row in a["classes"]}
    for row in b["classes"]:
        assert row["ap50-95_diff"] == pytest.approx(row["ap50-95"] - before[row["class"]])
    assert "Δ AP50-95" in (tmp_path / "eval_b" / "metrics.md").read_text()


def test_export_latest_loads_and_predicts_every_format(tiny_project):
    from ultralytics import YOLO

    tmp_path = tiny_project
    train_tiny(tmp_path, "mode=export", "export.weights=latest", "export.formats=[torchscript,onnx]", run="export")
    result = json.loads((tmp_path / "export" / "export_result.json").read_text())
    assert result["weights"] == str(tmp_path / "ft" / "sentinel.pt")  # latest: the newest fine-tune
    assert sorted(result["files"]) == ["onnx", "torchscript"]
    data = yaml.safe_load((tmp_path / "ft" / "finetune_args.yaml").read_text())["data"]
    image = sorted((Path(data).parent / "images" / "val").iterdir())[0]
    reference = YOLO(str(tmp_path / "ft" / "sentinel.pt")).predict(str(image), imgsz=64, verbose=False)[0]
    for fmt, path in result["files"].items():
        assert Path(path).is_file() and Path(path).parent == tmp_path / "export" / "export", fmt
        predicted = YOLO(path, task="detect").predict(str(image), imgsz=64, device="cpu", verbose=False)
        assert len(predicted) == 1 and predicted[0].boxes is not None, fmt
        assert predicted[0].names == reference.names, fmt


def test_export_format_with_missing_package_fails_first(tiny_project, tmp_path):
    result = run_train(
        [
            *TINY,
            "mode=export",
            f"export.weights={tiny_project / 'ft'}",
            "export.formats=[coreml]",
            f"data_dir={tmp_path}/data",
            f"hydra.run.dir={tmp_path}/run",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "pip install coremltools" in result.stderr
    assert not (tmp_path / "run" / "export").exists()


def test_mode_all_runs_every_stage_then_skips_them_all(tmp_path):
    first = train_tiny(tmp_path, "mode=all", run="all1")
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
    second = train_tiny(tmp_path, "mode=all", run="all2")
    stages = ("prep:", "tune:", "finetune:", "export:", "evaluate:")
    lines = [line for line in second.stdout.splitlines() if line.strip().startswith(stages)]
    assert len(lines) == 5 and all("(already done: reused)" in line for line in lines), lines
    assert not (tmp_path / "all2" / "ray_tune").exists() and not (tmp_path / "all2" / "finetune").exists()
    assert (tmp_path / "all2" / "metrics.json").read_text() == (tmp_path / "all1" / "metrics.json").read_text()

    # The same command in the same run folder again: everything reused, nothing of its own deleted.
    weights = (tmp_path / "all1" / "sentinel.pt").read_bytes()
    train_tiny(tmp_path, "mode=all", run="all1")
    assert (tmp_path / "all1" / "sentinel.pt").read_bytes() == weights
    assert (tmp_path / "all1" / "best_hparams.yaml").is_file() and (tmp_path / "all1" / "metrics.json").is_file()

    # A fine-tune-only change: the search is reused, the fine-tune runs again.
    third = train_tiny(tmp_path, "mode=all", "model.epochs=3", "model.output_name=longer.pt", run="all3")
    lines = {line.split(":")[0].strip(): line for line in third.stdout.splitlines() if line.startswith("  ")}
    assert "(already done: reused)" in lines["tune"] and "(already done" not in lines["finetune"]
    assert not (tmp_path / "all3" / "ray_tune").exists() and (tmp_path / "all3" / "longer.pt").is_file()


def test_killed_finetune_resumes_from_its_last_checkpoint(tmp_path):
    args = [*TINY, "mode=finetune", "model.epochs=8", "model.patience=8", f"data_dir={tmp_path}/data"]
    process = start_train([*args, f"hydra.run.dir={tmp_path}/first"], cwd=tmp_path)
    results = tmp_path / "first" / "finetune" / "results.csv"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if results.is_file() and len(results.read_text().splitlines()) >= 3:  # header + 2 epochs, last.pt saved
            break
        time.sleep(0.3)
    assert kill_process_tree(process) == -signal.SIGKILL, "training ended before it could be killed"
    epochs_before = len(results.read_text().splitlines()) - 1
    assert 2 <= epochs_before < 8 and not (tmp_path / "first" / "sentinel.pt").exists()

    result = run_train([*args, "finetune.resume=true", f"hydra.run.dir={tmp_path}/second"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finetune: resuming" in result.stdout + result.stderr
    epochs = [int(float(line.split(",")[0])) for line in results.read_text().splitlines()[1:]]
    # The same training went on to its 8 epochs from its last checkpoint; it did not start again at epoch 1.
    assert set(epochs) == set(range(1, 9)) and epochs.count(1) == 1
    assert (tmp_path / "second" / "sentinel.pt").is_file()
