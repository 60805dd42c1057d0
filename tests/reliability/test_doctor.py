"""mode=doctor reports what the selected config needs, never prints the key, and fails when something is missing."""

from __future__ import annotations

import socket

from conftest import run_train


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_doctor_on_the_demo_config_is_all_ok(tmp_path):
    args = ["experiment=demo", "mode=doctor", f"data_dir={tmp_path}/data", f"hydra.run.dir={tmp_path}/run"]
    result = run_train(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for row in (
        "| model weights | OK | yolov8n.yaml: a model built from scratch, nothing to download |",
        "| package ultralytics | OK |",
        "| torch / CUDA | OK |",
        "| Ray | OK |",
        "| free disk (data_dir) | OK |",
        "| MongoDB | OK |",
    ):
        assert row in result.stdout, row
    assert "PROBLEM" not in result.stdout
    assert (tmp_path / "run" / "doctor.md").is_file()
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "run" / "tracking.json").exists()  # no MLflow run


def test_doctor_flags_a_missing_roboflow_key_without_a_value(tmp_path):
    result = run_train(
        ["mode=doctor", "datasets=[guns]", f"data_dir={tmp_path}/data"], cwd=tmp_path, env={"ROBOFLOW_API_KEY": ""}
    )
    assert result.returncode == 1
    assert "| Roboflow key | PROBLEM | ROBOFLOW_API_KEY is not set |" in result.stdout
    assert "export ROBOFLOW_API_KEY=" in result.stderr


def test_doctor_shows_that_the_key_is_set_but_not_its_value(tmp_path):
    secret = "doctor-secret-5f4e3d2c"
    result = run_train(
        ["mode=doctor", "datasets=[guns]", "model=yolov8n_scratch", f"data_dir={tmp_path}/data"],
        cwd=tmp_path,
        env={"ROBOFLOW_API_KEY": secret},
    )
    assert result.returncode == 0, result.stderr
    assert "ROBOFLOW_API_KEY is set (value not shown)" in result.stdout
    assert secret not in result.stdout + result.stderr


def test_doctor_fails_on_an_unreachable_mongodb_and_ray_cluster(tmp_path):
    args = [
        "mode=doctor",
        "datasets=[coco]",
        f"datasets.coco.database_uri=mongodb://127.0.0.1:{free_port()}",
        f"hardware.ray_address=127.0.0.1:{free_port()}",
        f"data_dir={tmp_path}/data",
    ]
    result = run_train(args, cwd=tmp_path)
    assert result.returncode == 1
    assert "| MongoDB | PROBLEM |" in result.stdout and "| Ray | PROBLEM |" in result.stdout
    assert "Traceback" not in result.stderr


def test_doctor_says_pretrained_weights_cannot_be_downloaded_offline(tmp_path):
    result = run_train(["mode=doctor", f"data_dir={tmp_path}/data"], cwd=tmp_path, env={"YOLO_OFFLINE": "1"})
    assert result.returncode == 1  # the default model=yolov8n starts from yolov8n.pt, which is not here
    assert (
        "| model weights | PROBLEM | yolov8n.pt is not on disk and YOLO_OFFLINE=1 stops its download |" in result.stdout
    )
    assert "model weights: use model=yolov8n_scratch" in result.stderr
