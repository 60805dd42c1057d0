"""The trainer every Sentinel training uses (fine-tune and tune trials): Ultralytics' own trackers never load,
and a tune trial's checkpoints leave the optimizer's state out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builders import jpeg_bytes, make_source

# Builds Sentinel's trainer, then Ultralytics' plain one (the control), in a fresh process: what each loaded.
BUILD_BOTH = """
import json, sys
from ultralytics.utils import SETTINGS
from ultralytics.models.yolo.detect import DetectionTrainer
from sentinel.runtime.ultra import sentinel_trainer

data, project = sys.argv[1], sys.argv[2]
args = dict(model="yolov8n.yaml", data=data, epochs=1, imgsz=32, device="cpu", workers=0, project=project,
            exist_ok=True, plots=False)
hook_modules = lambda trainer: sorted({hook.__module__ for hooks in trainer.callbacks.values() for hook in hooks})
ours = sentinel_trainer()(overrides={**args, "name": "ours"})
seen = {"ours": hook_modules(ours), "mlflow_imported": "mlflow" in sys.modules,
        "settings_after": [SETTINGS["mlflow"], SETTINGS["raytune"]]}
plain = DetectionTrainer(overrides={**args, "name": "plain"})
seen.update(plain=hook_modules(plain), mlflow_imported_by_plain="mlflow" in sys.modules)
print("SEEN=" + json.dumps(seen))
"""
MLFLOW_HOOKS, RAYTUNE_HOOKS = "ultralytics.utils.callbacks.mlflow", "ultralytics.utils.callbacks.raytune"


def fresh_env(tmp_path: Path) -> dict[str, str]:
    """The test's environment with an Ultralytics settings folder of its own (YOLO_OFFLINE comes from conftest)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env["YOLO_CONFIG_DIR"] = str(tmp_path / "settings")
    return env


def seen_in_a_fresh_process(tmp_path: Path, script: str, *args: str) -> dict:
    """Run `script` on a one-image dataset (its path and a project folder follow `args`); what it printed as SEEN."""
    data = make_source(
        tmp_path / "data", ["gun"], {s: {"a.jpg": (jpeg_bytes(1), "0 0.5 0.5 0.2 0.2\n")} for s in ("train", "val")}
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *args, str(data / "dataset.yaml"), str(tmp_path / "runs")],
        env=fresh_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.split("SEEN=")[-1])


@pytest.mark.slow
def test_ultralytics_mlflow_and_raytune_integrations_are_not_loaded_and_settings_are_not_written(tmp_path: Path):
    subprocess.run([sys.executable, "-c", "import ultralytics.utils"], env=fresh_env(tmp_path), check=True)
    settings = next((tmp_path / "settings").rglob("settings.json"))  # the user's settings
    before = settings.read_bytes()
    assert json.loads(before)["mlflow"] is True and json.loads(before)["raytune"] is True  # both on, as by default

    seen = seen_in_a_fresh_process(tmp_path, BUILD_BOTH)

    assert MLFLOW_HOOKS not in seen["ours"] and RAYTUNE_HOOKS not in seen["ours"]
    assert not seen["mlflow_imported"]  # not imported at all: seconds in every fresh process
    assert seen["settings_after"] == [True, True]  # switched off for our trainer only
    assert MLFLOW_HOOKS in seen["plain"] and RAYTUNE_HOOKS in seen["plain"] and seen["mlflow_imported_by_plain"]
    assert settings.read_bytes() == before


# Trains one epoch with sentinel_trainer(resumable=...) in a fresh process: what each checkpoint held when it
# was written (Ultralytics' final validation strips the optimizer afterwards either way), and what is left.
TRAIN_ONE_EPOCH = """
import json, sys, torch
from ultralytics import YOLO
from sentinel.runtime.ultra import sentinel_trainer

resumable, data, project = sys.argv[1] == "resumable", sys.argv[2], sys.argv[3]
trainer = sentinel_trainer(resumable=resumable)(overrides=dict(
    model="yolov8n.yaml", data=data, epochs=1, imgsz=64, device="cpu", workers=0, project=project, exist_ok=True,
    plots=False, name=sys.argv[1]))
seen = {}
def on_model_save(trainer):
    for name, path in (("last", trainer.last), ("best", trainer.best)):
        checkpoint = torch.load(path, weights_only=False)
        seen[name] = {"state": len(checkpoint["optimizer"]["state"]),
                      "groups": len(checkpoint["optimizer"]["param_groups"]), "ema": checkpoint["ema"] is not None}
trainer.add_callback("on_model_save", on_model_save)
trainer.train()
seen["optimizer_after"] = type(trainer.optimizer).__name__
seen["loads"] = YOLO(str(trainer.best)).model is not None
print("SEEN=" + json.dumps(seen))
"""


@pytest.mark.slow
@pytest.mark.parametrize("which", ["resumable", "trial"])
def test_a_trial_checkpoint_has_the_weights_without_the_optimizer_state(tmp_path: Path, which: str):
    seen = seen_in_a_fresh_process(tmp_path, TRAIN_ONE_EPOCH, which)

    for checkpoint in (seen["last"], seen["best"]):
        assert checkpoint["ema"] and checkpoint["groups"] > 0
        assert (checkpoint["state"] > 0) is (which == "resumable")  # a fine-tune's last.pt can resume
    assert seen["optimizer_after"] != "OptimizerWithoutState"  # training goes on with the real optimizer
    assert seen["loads"]


# Trains two epochs with plots off in a fresh process, as a new tune trial worker does: which of the imports
# Ultralytics makes for plots and for the checkpoints' copy of results.csv happened, and what that copy holds.
TRAIN_WITHOUT_PLOTS = """
import json, sys, torch
from sentinel.runtime.ultra import sentinel_trainer

data, project = sys.argv[1], sys.argv[2]
trainer = sentinel_trainer(resumable=False)(overrides=dict(
    model="yolov8n.yaml", data=data, epochs=2, imgsz=64, device="cpu", workers=0, project=project, exist_ok=True,
    plots=False, name="trial"))
trainer.train()
seen = {"imported": sorted(m for m in ("polars", "matplotlib.font_manager") if m in sys.modules),
        "csv": str(trainer.csv), "train_results": torch.load(trainer.last, weights_only=False)["train_results"]}
print("SEEN=" + json.dumps(seen))
"""


@pytest.mark.slow
def test_a_training_without_plots_imports_neither_polars_nor_the_font_manager_and_keeps_its_results(tmp_path: Path):
    import polars as pl

    seen = seen_in_a_fresh_process(tmp_path, TRAIN_WITHOUT_PLOTS)

    assert seen["imported"] == []
    ultralytics_read = pl.read_csv(Path(seen["csv"]).read_bytes(), infer_schema_length=None).to_dict(as_series=False)
    assert len(ultralytics_read["epoch"]) == 2
    assert seen["train_results"] == ultralytics_read  # what Ultralytics' polars read gives, types included


def test_the_font_check_is_skipped_only_when_asked_and_comes_back(tmp_path: Path):
    import ultralytics.data.utils as data_utils

    from sentinel.runtime.ultra import font_check_skipped

    check_font = data_utils.check_font
    with font_check_skipped(False):
        assert data_utils.check_font is check_font  # plots on: Ultralytics finds (or fetches) its font
    with font_check_skipped(True):
        assert data_utils.check_font("Arial.ttf") is None
    assert data_utils.check_font is check_font


def test_results_csv_values_are_typed_per_column_as_polars_does(tmp_path: Path):
    import polars as pl

    from sentinel.runtime.ultra import read_results_csv

    path = tmp_path / "results.csv"
    path.write_text("epoch,time,metrics/mAP50(B),val/box_loss,val/cls_loss\n1,1.5,0,nan,inf\n2,3,0,1.25,1e-05\n")
    assert read_results_csv(path) == pl.read_csv(path.read_bytes(), infer_schema_length=None).to_dict(as_series=False)
    assert read_results_csv(tmp_path / "missing.csv") == {}
