"""The trainer every Sentinel training uses (fine-tune and tune trials): Ultralytics' own trackers never load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from builders import jpeg_bytes, make_source

# Builds Sentinel's trainer, then Ultralytics' plain one (the control), in a fresh process: what each loaded.
BUILD_BOTH = """
import json, sys
from ultralytics.utils import SETTINGS
from ultralytics.models.yolo.detect import DetectionTrainer
from sentinel.ultra import sentinel_trainer

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


def test_ultralytics_mlflow_and_raytune_integrations_are_not_loaded_and_settings_are_not_written(tmp_path: Path):
    data = make_source(
        tmp_path / "data", ["gun"], {s: {"a.jpg": (jpeg_bytes(1), "0 0.5 0.5 0.2 0.2\n")} for s in ("train", "val")}
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env["YOLO_CONFIG_DIR"] = str(tmp_path / "settings")  # YOLO_OFFLINE comes from conftest
    subprocess.run([sys.executable, "-c", "import ultralytics.utils"], env=env, check=True)  # the user's settings
    settings = next((tmp_path / "settings").rglob("settings.json"))
    before = settings.read_bytes()
    assert json.loads(before)["mlflow"] is True and json.loads(before)["raytune"] is True  # both on, as by default

    result = subprocess.run(
        [sys.executable, "-c", BUILD_BOTH, str(data / "dataset.yaml"), str(tmp_path / "runs")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.split("SEEN=")[-1])

    assert MLFLOW_HOOKS not in seen["ours"] and RAYTUNE_HOOKS not in seen["ours"]
    assert not seen["mlflow_imported"]  # not imported at all: seconds in every fresh process
    assert seen["settings_after"] == [True, True]  # switched off for our trainer only
    assert MLFLOW_HOOKS in seen["plain"] and RAYTUNE_HOOKS in seen["plain"] and seen["mlflow_imported_by_plain"]
    assert settings.read_bytes() == before
