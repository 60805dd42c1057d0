"""mode=inspect: every box of the test split a true positive, false positive or false negative, in FiftyOne
(real mongod), with galleries and the App; its numbers agree with mode=evaluate's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from builders import make_source
from conftest import REPO, free_port, kill_process_tree, run_train
from sentinel.stages.inspection import PREDICTED, TRUTH

pytestmark = pytest.mark.slow

BLANK = "blank__empty.jpg"  # the merged name of the hand-built test image


def blank_jpeg() -> bytes:
    """A flat grey image: nothing in it for the model to find."""
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (96, 96), (128, 128, 128)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def args_for(root: Path, run: str, *more: str) -> list[str]:
    """The demo's data and model (as experiment=demo), plus `blank`: one test image whose gun nobody drew."""
    return [
        f"hydra.searchpath=[file://{root / 'conf'}]",
        "datasets=[demo,blank]",
        "model=yolov8n_scratch",
        "model.imgsz=64",
        "hardware=cpu",
        "tracking=none",
        "merge.samples_grid=0",
        f"data_dir={root / 'data'}",
        f"hydra.run.dir={root / run}",
        f"evaluate.weights={root / 'sentinel.pt'}",  # the session's demo weights (the fixture links them here)
        *more,
    ]


@pytest.fixture(scope="module")
def project(tmp_path_factory, demo_weights):
    """The session's demo weights (fine-tuned as `make demo` does; the same class list), mode=evaluate and
    mode=inspect with them on the test split."""
    root = tmp_path_factory.mktemp("inspect")
    blank = make_source(root / "blank", ["gun"], {"test": {"empty.jpg": (blank_jpeg(), "0 0.5 0.5 0.3 0.3\n")}})
    (root / "conf" / "datasets").mkdir(parents=True)
    (root / "conf" / "datasets" / "blank.yaml").write_text(
        f"# @package datasets\ndefaults:\n  - /sentinel/source/yolo@blank\n  - _self_\nblank:\n  path: {blank}\n"
    )
    (root / "sentinel.pt").symlink_to(demo_weights)
    for run, mode in (("ev", "mode=evaluate"), ("insp", "mode=inspect")):
        done = run_train(args_for(root, run, mode), cwd=root)
        assert done.returncode == 0, done.stderr[-3000:]
    return root


def errors_of(root: Path, run: str = "insp") -> dict:
    return json.loads((root / run / "errors.json").read_text())


def test_a_box_the_model_cannot_have_found_is_a_false_negative(project):
    errors = errors_of(project)
    blank = [r for r in errors["most_missed"] if Path(r["image"]).name == BLANK]
    assert blank and blank[0]["false_negatives"] == 1 and blank[0]["missed"] == ["gun"]
    gun = next(r for r in errors["classes"] if r["class"] == "gun")
    assert gun["false_negatives"] >= 1 and gun["true_positives"] + gun["false_negatives"] == gun["instances"]


def test_counts_agree_with_mode_evaluate(project):
    """Same boxes (Ultralytics' validator), same confidence: the instances match exactly and each recall to
    within one box. Ultralytics interpolates its recall curve between prediction confidences and lets a
    lower-confidence box take a truth, FiftyOne matches by confidence: that one box is the only slack."""
    errors = errors_of(project)
    evaluated = {r["class"]: r for r in json.loads((project / "ev" / "metrics.json").read_text())["classes"]}
    assert errors["split"] == "test" and errors["images"] == 25  # 12 + 12 demo images, and the blank one
    for row in errors["classes"]:
        theirs = evaluated[row["class"]]
        assert row["instances"] == theirs["instances"], row["class"]
        assert abs(row["recall"] - theirs["recall"]) <= 1 / row["instances"] + 1e-6, row["class"]
        assert abs(row["recall"] - errors["evaluate_recall"][row["class"]]) <= 1 / row["instances"] + 1e-6, row["class"]
    assert "| gun |" in (project / "insp" / "errors.md").read_text()


def colour_pixels(path: Path, colour: tuple[int, int, int]) -> int:
    with Image.open(path) as image:
        return sum(1 for pixel in image.convert("RGB").getdata() if pixel == colour)


def test_galleries_show_ground_truth_and_predictions_in_their_colours(project):
    errors = errors_of(project)
    assert colour_pixels(project / "insp" / "missed.png", TRUTH) > 100  # at least the blank image's gun
    false_alarms = sum(r["false_positives"] for r in errors["classes"])
    if false_alarms:
        assert colour_pixels(project / "insp" / "false_alarms.png", PREDICTED) > 50
    else:
        assert colour_pixels(project / "insp" / "false_alarms.png", PREDICTED) == 0


def datasets_in_fiftyone() -> list[str]:
    """The names in this session's FiftyOne database (its own mongod; conftest sets the folder)."""
    done = subprocess.run(
        [sys.executable, "-c", "import fiftyone as fo; print('\\n'.join(fo.list_datasets()))"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FIFTYONE_DATABASE_VALIDATION": "false"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def test_the_dataset_is_deleted_unless_persistent_and_a_rerun_replaces_it(project):
    assert errors_of(project)["fiftyone_dataset"] not in datasets_in_fiftyone()
    for _ in range(2):  # the same run folder twice: the second replaces the first's dataset
        done = run_train(args_for(project, "keep", "mode=inspect", "inspect.persistent=true"), cwd=project)
        assert done.returncode == 0, done.stderr[-3000:]
    name = errors_of(project, "keep")["fiftyone_dataset"]
    count = subprocess.run(
        [sys.executable, "-c", f"import fiftyone as fo; d = fo.load_dataset({name!r}); print(len(d)); d.delete()"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FIFTYONE_DATABASE_VALIDATION": "false"},
    )
    assert count.returncode == 0, count.stderr[-2000:]
    assert int(count.stdout.split()[-1]) == 25  # not 50: replaced, never merged into


def answers_http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.timeout(400)  # the bound on every wait below: a hang fails here
def test_the_app_serves_the_dataset_until_stopped(project):
    """Ctrl-C comes once the run says the App serves (that line is printed after launch_app returns), and the
    App's server goes with the run. Nothing here waits on a clock: each wait is for a line or a process."""
    import psutil

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    args = args_for(project, "app", "mode=inspect", "inspect.app=true", f"inspect.port={port}")
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=project,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        serving = next((line for line in process.stdout if "Ctrl-C to stop" in line), None)
        assert serving is not None and url in serving, "mode=inspect ended before serving the App"
        assert answers_http(url)
        family = psutil.Process(process.pid).children(recursive=True)
        servers = [p for p in family if str(port) in " ".join(p.cmdline())]
        assert servers, "no App server process among the run's children"
        os.kill(process.pid, signal.SIGINT)  # Ctrl-C
        process.stdout.read()  # the rest of its output, so it never blocks on a full pipe
        assert process.wait() == 0
        psutil.wait_procs(servers)  # FiftyOne's service wrapper stops the server when the run is gone
        assert not answers_http(url)
    finally:
        if process.poll() is None:
            kill_process_tree(process)


@pytest.mark.parametrize(
    ("more", "text"),
    [
        (["evaluate.weights=/nonexistent/w.pt"], "evaluate.weights"),
        (["evaluate.split=holdout"], "evaluate.split"),  # prep never leaves an empty split: it drops its folder
        ([f"inspect.database_uri=mongodb://127.0.0.1:{free_port()}"], "inspect.database_uri"),
    ],
    ids=["no_weights", "missing_split", "unreachable_database"],
)
def test_bad_inputs_are_one_clear_line(project, more, text):
    done = run_train(args_for(project, "bad", "mode=inspect", *more), cwd=project, timeout=120)
    assert done.returncode != 0
    assert text in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len([line for line in done.stderr.splitlines() if line.startswith("error:")]) == 1
