"""With a fake ROBOFLOW_API_KEY set, run prep (an HTTP error, then a success) and a tiny tune with DEBUG
logging, then search everything written — run folders, data_dir, Ray's session logs, stdout and stderr —
for the key. It must appear nowhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from builders import jpeg_bytes, make_source
from conftest import RAY_TEMP, run_train
from fake_roboflow import FakeRoboflow, zip_folder

SECRET = "fake-secret-9a8b7c6d5e"
WS, PROJECT = "liteye-systems", "weapon-classification"


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


@pytest.fixture
def server(tmp_path):
    export = make_source(
        tmp_path / "export",
        ["Handgun"],
        {
            "train": {f"t{i}.jpg": (jpeg_bytes(i), "0 0.5 0.5 0.2 0.2\n") for i in range(4)},
            "val": {"v.jpg": (jpeg_bytes(9), "0 0.5 0.5 0.2 0.2\n")},
        },
        layout="roboflow",
    )
    with FakeRoboflow(WS, PROJECT, 2, zip_folder(export), SECRET) as fake:
        yield fake


@pytest.mark.slow
def test_the_key_is_written_nowhere(server, tmp_path):
    env = {"ROBOFLOW_API_KEY": SECRET, "API_URL": server.url}
    common = [
        "mode=prep",
        "datasets=[guns,demo]",
        "datasets.guns.retries=0",
        f"data_dir={tmp_path}/data",
        "hydra.verbose=true",
        "merge.samples_grid=0",
    ]
    server.fail = {f"/{WS}": [500] * 20}
    failed = run_train([*common, f"hydra.run.dir={tmp_path}/run_error"], cwd=tmp_path, env=env)
    assert failed.returncode == 1 and "HTTP 500" in failed.stderr
    server.fail = {}
    ok = run_train([*common, f"hydra.run.dir={tmp_path}/run_ok"], cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "api_key=***" in (tmp_path / "run_ok" / "train.log").read_text()  # the URL was logged, masked

    tune = run_train(
        [
            "mode=tune",
            "experiment=demo",
            "model.imgsz=64",
            "tune.epochs=1",
            "tune.grace_period=1",
            "tune.num_samples=2",
            "hardware.num_cpus=2",
            "hydra.verbose=true",
            f"data_dir={tmp_path}/data",
            f"hydra.run.dir={tmp_path}/run_tune",
            "merge.samples_grid=0",
        ],
        cwd=tmp_path,
        env=env,
    )
    assert tune.returncode == 0, tune.stderr[-2000:]

    outputs = [failed.stdout, failed.stderr, ok.stdout, ok.stderr, tune.stdout, tune.stderr]
    assert not [text for text in outputs if SECRET in text]
    assert files_containing(tmp_path, SECRET.encode()) == []
    ray_logs = RAY_TEMP / "ray" / "session_latest" / "logs"  # the search's local Ray (RAY_TMPDIR, conftest)
    assert ray_logs.is_dir() and files_containing(ray_logs, SECRET.encode()) == []


PASSWORD = "pw-7f3e9d1c"  # in a URL's user info: must be refused, and appear in no file the run writes


@pytest.mark.parametrize(
    ("override", "fix"),
    [
        (f"tracking.uri=http://alice:{PASSWORD}@127.0.0.1:1/", "MLFLOW_TRACKING_PASSWORD"),
        (f"tracking.uri=postgresql://alice:{PASSWORD}@localhost:5432/mlflow", "MLFLOW_TRACKING_PASSWORD"),
        (f"inspect.database_uri=mongodb://bob:{PASSWORD}@127.0.0.1:1/", "FIFTYONE_DATABASE_URI"),
    ],
)
def test_a_password_in_a_url_on_the_command_line_is_refused_before_anything_is_written(tmp_path, override, fix):
    result = run_train(["mode=prep", override, f"data_dir={tmp_path}/data"], cwd=tmp_path)
    key = override.split("=", 1)[0]
    assert result.returncode == 1 and f"'{key}'" in result.stderr and fix in result.stderr
    assert PASSWORD not in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no run folder, no data_dir


def test_a_password_in_a_url_in_a_config_file_is_refused_and_written_nowhere(tmp_path):
    presets = tmp_path / "conf" / "experiment"
    presets.mkdir(parents=True)
    (presets / "leaky.yaml").write_text(
        f"# @package _global_\ntracking:\n  uri: postgresql://carol:{PASSWORD}@localhost:5432/mlflow\n"
    )
    args = [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "experiment=leaky", "mode=prep"]
    result = run_train([*args, f"data_dir={tmp_path}/data", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert result.returncode == 1 and "'tracking.uri'" in result.stderr and "MLFLOW_TRACKING_USERNAME" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    written = [p for p in files_containing(tmp_path, PASSWORD.encode()) if p != presets / "leaky.yaml"]
    assert written == []  # .hydra/config.yaml was written by Hydra with it, then masked
    assert "carol:***@localhost" in (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
