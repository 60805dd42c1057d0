"""Kinds of input and fault that once lost data, gave silently wrong results, hung or printed tracebacks.

Each case runs train.py as a user would and asserts: the exit code, one clear line naming the key or file
and the fix, no traceback on the terminal, and unchanged bytes of every file outside the run folder and
data_dir. Hang cases run under a hard timeout (run_train's), which fails the test instead of waiting.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
from pathlib import Path

import pytest

from builders import jpeg_bytes, make_source, tree_digest
from conftest import UNTRACKED, mine_args, outside_run_and_data, run_train

GOOD = "0 0.5 0.5 0.2 0.2\n"


def user_source(tmp_path: Path, train: dict | None = None, val: dict | None = None, names=("gun", "knife")) -> Path:
    """A user's YOLO folder and a `mine` dataset config that points at it."""
    root = make_source(
        tmp_path / "src" / "mine",
        list(names),
        {
            "train": train or {"a.jpg": (jpeg_bytes(1), GOOD), "b.jpg": (jpeg_bytes(2), "1 0.5 0.5 0.2 0.2\n")},
            "val": val or {"v.jpg": (jpeg_bytes(3), GOOD)},
        },
    )
    conf = tmp_path / "conf" / "datasets"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "mine.yaml").write_text(
        f"# @package datasets\ndefaults:\n  - /sentinel/source/yolo@mine\n  - _self_\nmine:\n  path: {root}\n"
    )
    return root


def outside(tmp_path: Path) -> dict[str, str]:
    """Every file outside the run folder, data_dir and the tracking store, with its content hash."""
    return {k: v for k, v in tree_digest(tmp_path).items() if outside_run_and_data(k)}


def run(tmp_path: Path, *args: str, env: dict | None = None, timeout: float = 300):
    """train.py on the user's source; returns (result, stderr lines). Checks nothing outside changed."""
    before = outside(tmp_path)
    result = run_train([*mine_args(tmp_path), *args], cwd=tmp_path, env=env, timeout=timeout)
    assert outside(tmp_path) == before
    assert "Traceback" not in result.stderr
    return result, [line for line in result.stderr.splitlines() if line.strip()]


def fails_with(tmp_path: Path, *args: str, text: str, env: dict | None = None) -> str:
    result, lines = run(tmp_path, *args, env=env)
    assert result.returncode != 0
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], result.stderr[-2000:]
    return errors[0]


# --- data loss ------------------------------------------------------------------------------------------


def test_output_name_outside_the_run_folder_is_refused(tmp_path):
    user_source(tmp_path)
    precious = tmp_path / "precious.pt"
    precious.write_bytes(b"not yours")
    fails_with(tmp_path, "mode=finetune", f"model.output_name={precious}", text="model.output_name")
    assert precious.read_bytes() == b"not yours"


def test_a_run_folder_holding_another_stage_run_is_not_overwritten(tmp_path):
    user_source(tmp_path)
    (tmp_path / "run").mkdir()
    earlier = {"key": "another-fine-tune", "status": "done"}
    (tmp_path / "run" / "finetune_state.json").write_text(json.dumps(earlier))
    (tmp_path / "run" / "sentinel.pt").write_bytes(b"earlier weights")
    fails_with(tmp_path, "mode=finetune", "model=yolov8n_scratch", text="already holds a finetune run")
    assert (tmp_path / "run" / "sentinel.pt").read_bytes() == b"earlier weights"
    assert json.loads((tmp_path / "run" / "finetune_state.json").read_text()) == earlier


@pytest.mark.slow
def test_a_checkpoint_write_that_dies_leaves_the_previous_checkpoint_whole(tmp_path):
    import torch

    user_source(tmp_path)
    args = ["mode=finetune", "model=yolov8n_scratch", "model.imgsz=32", "model.epochs=3", "model.patience=3"]
    args.append("augmentation.close_mosaic=1")
    result, _ = run(tmp_path, *args, env={"SENTINEL_KILL_AFTER": "checkpoint.before_rename:2"})
    assert result.returncode == -9  # killed after writing epoch 2's checkpoint, before renaming it into place
    weights = tmp_path / "run" / "finetune" / "weights"
    assert list(weights.glob(".last.pt.tmp-*"))  # the new bytes never replaced anything
    assert torch.load(weights / "last.pt", weights_only=False)["epoch"] == 0  # epoch 1's checkpoint, whole


# --- silently wrong -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["+merge.alias={a: b}"], "merge.alias"),
        (["+model.epoch=5"], "did you mean model.epochs"),
        (["evaluate.split=tst", "mode=evaluate"], "evaluate.split"),
        (["export.formats=[]", "mode=export"], "export.formats"),
        (["tune.epochs=1", "mode=tune"], "tune.grace_period"),
        (["tune.metric=metrics/mAP50-95", "mode=tune", "model=yolov8n_scratch"], "did you mean metrics/mAP50-95(B)"),
        (["merge.aliases={gun: knife, knife: gun}"], "cycle"),
        (["merge.aliases={pistol: gun}"], "['pistol'] are in no selected dataset"),
    ],
    ids=["plus_unknown", "plus_near_name", "split_typo", "no_formats", "one_epoch", "metric_typo", "cycle", "unknown"],
)
def test_settings_that_would_do_nothing_or_the_wrong_thing_are_refused(tmp_path, args, key):
    user_source(tmp_path)
    fails_with(tmp_path, *args, text=key)
    assert not (tmp_path / "data" / "merged").exists() or not list((tmp_path / "data" / "merged").glob("[!.]*"))


def test_alias_chains_are_followed_to_their_end(tmp_path):
    user_source(tmp_path)
    result, _ = run(tmp_path, "merge.aliases={knife: blade, blade: gun}")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "run" / "prep_report.json").read_text())
    assert report["classes"]["names"] == ["gun"]


def test_labels_in_utf16_are_read_and_undecodable_ones_are_skipped_not_backgrounds(tmp_path):
    utf16 = "\ufeff0 0.5 0.5 0.2 0.2\r\n".encode("utf-16-le")
    root = user_source(
        tmp_path,
        train={
            "a.jpg": (jpeg_bytes(1), GOOD),
            "u16.jpg": (jpeg_bytes(4), None),
            "latin.jpg": (jpeg_bytes(5), None),
        },
    )
    (root / "labels" / "train" / "u16.txt").write_bytes(utf16)
    (root / "labels" / "train" / "latin.txt").write_bytes(b"0 0.5 0.5 0.2 0.2 caf\xe9\n")
    result, _ = run(tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "run" / "prep_report.json").read_text())
    assert report["images"]["mine"]["train"] == 2  # a.jpg and the UTF-16 one, with its box
    assert report["boxes"]["mine"]["train"] == {"gun": 2}
    assert report["skipped_images"]["mine"]["train"] == {"unreadable_label_file": 1}
    assert "unreadable_label_file" in (tmp_path / "run" / "prep_report.md").read_text()


def test_cached_build_is_not_reused_after_a_files_mode_changes(tmp_path):
    root = user_source(tmp_path)
    run(tmp_path)
    first = json.loads((tmp_path / "run" / "prep_result.json").read_text())
    os.chmod(root / "images" / "train" / "a.jpg", 0o600)
    run(tmp_path, f"hydra.run.dir={tmp_path}/run2")  # "run" keeps the finished run's records
    second = json.loads((tmp_path / "run2" / "prep_result.json").read_text())
    assert not second["cache_hit"] and second["fingerprint"] != first["fingerprint"]


def test_samples_grid_is_drawn_on_a_cache_hit_of_a_build_made_without_one(tmp_path):
    user_source(tmp_path)
    run(tmp_path)  # merge.samples_grid=0
    assert not (tmp_path / "run" / "samples.png").exists()
    result, _ = run(tmp_path, "merge.samples_grid=4", f"hydra.run.dir={tmp_path}/run2")  # other settings
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run2" / "prep_result.json").read_text())["cache_hit"]
    assert (tmp_path / "run2" / "samples.png").stat().st_size > 0


# --- tracebacks -----------------------------------------------------------------------------------------


def test_data_dir_that_is_a_file_is_one_line(tmp_path):
    user_source(tmp_path)
    (tmp_path / "afile").write_text("x")
    before = outside(tmp_path)
    result = run_train(
        [
            f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
            "datasets=[mine]",
            f"data_dir={tmp_path}/afile",
            f"hydra.run.dir={tmp_path}/run",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "config key 'data_dir'" in result.stderr and "is a file" in result.stderr
    assert "Traceback" not in result.stderr and outside(tmp_path) == before


def test_gpu_device_without_cuda_is_one_line(tmp_path):
    user_source(tmp_path)
    fails_with(tmp_path, "mode=finetune", "model=yolov8n_scratch", "hardware.device=0", text="hardware.device")


def test_symbolic_link_loop_in_a_source_is_walked_once(tmp_path):
    root = user_source(tmp_path)
    (root / "images" / "train" / "loop").symlink_to(root / "images" / "train")
    result, _ = run(tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "prep_report.json").read_text())["images"]["mine"]["train"] == 2


def test_corrupt_result_of_an_earlier_run_is_one_line(tmp_path):
    user_source(tmp_path)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "finetune_result.json").write_text("")
    fails_with(tmp_path, "mode=evaluate", f"evaluate.weights={earlier}", text="finetune_result.json")


def test_unforeseen_error_is_one_line_and_its_traceback_is_in_the_log(tmp_path):
    user_source(tmp_path)
    line = fails_with(
        tmp_path, text="unexpected RuntimeError: injected fault", env={"SENTINEL_RAISE_AT": "merge.batch"}
    )
    assert "train.log" in line
    log = (tmp_path / "run" / "train.log").read_text()
    assert "Traceback" in log and "injected fault at merge.batch" in log


# --- messages -------------------------------------------------------------------------------------------


def test_val_identical_to_train_names_the_cause_and_writes_the_report(tmp_path):
    same = {"a.jpg": (jpeg_bytes(1), GOOD), "b.jpg": (jpeg_bytes(2), GOOD)}
    user_source(tmp_path, train=same, val=same)
    line = fails_with(tmp_path, text="all 2 val images were skipped (leak_of_train_image 2)")
    assert "merge.drop_leaks=false" in line
    report = json.loads((tmp_path / "run" / "prep_report.json").read_text())
    assert report["skipped_images"]["mine"]["val"] == {"leak_of_train_image": 2}
    assert (tmp_path / "run" / "prep_report.md").is_file()


def test_every_image_undecodable_names_the_reason(tmp_path):
    user_source(tmp_path, train={"a.jpg": (b"not a jpeg at all", GOOD), "b.jpg": (b"", GOOD)})
    line = fails_with(tmp_path, text="all 2 train images were skipped")
    assert "undecodable_image" in line or "empty_image_file" in line


def test_missing_key_hint_is_not_mangled_by_redaction(tmp_path):
    result = run_train(
        ["mode=prep", "datasets=[guns]", UNTRACKED, f"data_dir={tmp_path}/data", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path,
        env={"ROBOFLOW_API_KEY": ""},
    )
    assert result.returncode == 1 and "export ROBOFLOW_API_KEY=<your key>" in result.stderr


def test_a_key_on_the_command_line_is_refused_before_anything_is_written(tmp_path):
    user_source(tmp_path)
    secret = "cli-secret-1234abcd"
    result = run_train([f"+datasets.mine.api_key={secret}", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert result.returncode == 1 and "ROBOFLOW_API_KEY" in result.stderr and secret not in result.stderr
    assert not (tmp_path / "run").exists()
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


# --- hangs ----------------------------------------------------------------------------------------------


@pytest.fixture
def http_service():
    """Something that is not Ray, listening on a local port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("mode", ["tune", "doctor"])
def test_ray_address_of_a_service_that_is_not_ray_fails_fast(tmp_path, http_service, mode):
    user_source(tmp_path)
    result, _ = run(
        tmp_path, f"mode={mode}", "model=yolov8n_scratch", f"hardware.ray_address={http_service}", timeout=120
    )
    assert result.returncode == 1
    assert "is not Ray" in result.stderr + result.stdout
    assert not (tmp_path / "run" / "tune").exists()  # before the dry builds, which take tens of seconds


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "key"),
    [(["hardware.gpu_per_trial=0.5"], "hardware.gpu_per_trial"), (["hardware.cpu_per_trial=64"], "cpu_per_trial")],
    ids=["gpu_without_gpu", "more_cpus_than_any_node"],
)
def test_trials_that_could_never_start_fail_before_the_first(tmp_path, args, key):
    user_source(tmp_path)
    common = ["mode=tune", "model=yolov8n_scratch", "search_space=demo", "hardware.num_cpus=2", "model.imgsz=32"]
    line = fails_with(tmp_path, *common, *args, text=key)
    assert "Fix:" in line
    assert not (tmp_path / "run" / "ray_tune").exists()


def test_doctor_reports_a_gpu_trial_on_a_machine_without_one(tmp_path):
    user_source(tmp_path)
    result, _ = run(tmp_path, "mode=doctor", "hardware=gpu", "hardware.device=cpu")
    assert result.returncode == 1 and "| Ray | PROBLEM |" in result.stdout
