"""Round 2 of unseen inputs, around tracking, compare, sweeps and run folders, through train.py: each refusal is
one line naming the key or path and the fix, no traceback, and never after minutes of a library's retries
(run_train's timeout fails a hang); a failure in tracking still ends the MLflow run with the run's status."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_train

HANG_GUARD_S = 60  # far above what a refusal takes; MLflow's own retries on a bad store last ~110 s


def one_error(result, text: str) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and text in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Fix:" in errors[0] and not errors[0].rstrip().endswith("Fix:")
    return errors[0]


def test_a_zero_tracking_timeout_is_refused_naming_the_key(tmp_path):
    result = run_train(["mode=prep", "tracking.timeout_s=0", f"data_dir={tmp_path}/data"], cwd=tmp_path)
    one_error(result, "tracking.timeout_s")


@pytest.mark.parametrize("kind", ["folder", "not sqlite"])
def test_a_local_store_mlflow_cannot_open_is_named_at_once(tmp_path, kind):
    store = tmp_path / "outputs" / "mlflow.db"
    if kind == "folder":
        store.mkdir(parents=True)
    else:
        store.parent.mkdir(parents=True)
        store.write_text("these are my notes, not a database\n")
    args = ["mode=prep", "merge.samples_grid=0", f"data_dir={tmp_path}/data", f"hydra.run.dir={tmp_path}/run"]
    result = run_train(args, cwd=tmp_path, timeout=HANG_GUARD_S)
    assert str(store) in one_error(result, "tracking.uri")
    assert not (tmp_path / "data").exists()  # refused before any work
    assert store.is_dir() if kind == "folder" else store.read_text().startswith("these are my notes")


@pytest.mark.parametrize("tracking", ["mlflow", "none"])
def test_compare_over_a_sweep_folder_that_does_not_exist_names_it(tmp_path, tracking):
    result = run_train(["mode=compare", f"tracking={tracking}", f"compare.sweep={tmp_path}/nowhere"], cwd=tmp_path)
    assert f"{tmp_path}/nowhere" in one_error(result, "compare.sweep")


@pytest.mark.slow
def test_compare_over_a_sweep_folder_with_a_quote_in_its_name_says_what_it_found(tmp_path):
    sweep = tmp_path / "it's" / "sweep"
    sweep.mkdir(parents=True)
    prep = ["mode=prep", "merge.samples_grid=0", f"data_dir={tmp_path}/data", f"hydra.run.dir={tmp_path}/run"]
    assert run_train(prep, cwd=tmp_path).returncode == 0  # a store with one run, not of that sweep
    result = run_train(["mode=compare", f'compare.sweep="{sweep}"'], cwd=tmp_path, timeout=HANG_GUARD_S)
    assert f"sweep {sweep}" in one_error(result, "no finished run in")


def test_compare_from_folders_leaves_out_a_run_whose_prep_failed(tmp_path):
    common = ["merge.samples_grid=0", f"data_dir={tmp_path}/data", "tracking=none"]
    assert run_train(["mode=prep", *common, "hydra.run.dir=outputs/good"], cwd=tmp_path).returncode == 0
    failed = run_train(
        ["mode=prep", *common, "merge.include=[no_such_class]", "hydra.run.dir=outputs/bad"], cwd=tmp_path
    )
    assert failed.returncode == 1 and (tmp_path / "outputs" / "bad" / "config_resolved.yaml").is_file()
    result = run_train(["mode=compare", "compare.metric=prep/kept", "tracking=none", "hydra.run.dir=cmp"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| outputs/good |" in report and "outputs/bad" not in report


@pytest.mark.slow
def test_the_first_compare_in_a_new_folder_leaves_a_store_that_later_runs_record_in(tmp_path):
    from mlflow.tracking import MlflowClient

    one_error(run_train(["mode=compare", "compare.metric=prep/kept", "hydra.run.dir=cmp"], cwd=tmp_path), "no finished")
    prep = ["mode=prep", "merge.samples_grid=0", f"data_dir={tmp_path}/data", "hydra.run.dir=outputs/prep"]
    assert run_train(prep, cwd=tmp_path).returncode == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sentinel")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`sentinel.mode` = 'prep'")
    assert [r.info.status for r in runs] == ["FINISHED"] and runs[0].data.metrics["prep/kept"] > 0


def store_runs(tmp_path: Path, mode: str = "prep", experiment: str = "sentinel"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], filter_string=f"tags.`sentinel.mode` = '{mode}'")


@pytest.mark.slow
def test_class_names_mlflow_refuses_cost_no_metric_and_are_kept_as_tags(tmp_path):
    from builders import jpeg_bytes, make_source

    names = ["o'clock", "c++", "gun (small)"]
    labels = {f"{i}.jpg": (jpeg_bytes(i), f"{i % 3} 0.5 0.5 0.2 0.2\n") for i in range(6)}
    root = make_source(
        tmp_path / "src", names, {"train": labels, "val": {"v.jpg": (jpeg_bytes(9), "0 0.5 0.5 0.2 0.2\n")}}
    )
    conf = tmp_path / "conf" / "datasets"
    conf.mkdir(parents=True)
    conf.joinpath("odd.yaml").write_text(
        f"# @package datasets\ndefaults:\n  - /sentinel/source/yolo@odd\n  - _self_\nodd:\n  path: {root}\n"
    )
    args = [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "datasets=[odd]", "mode=prep", "merge.samples_grid=0"]
    result = run_train([*args, f"data_dir={tmp_path}/data", "hydra.run.dir=outputs/run"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "not fully tracked" not in result.stdout and "failed" not in result.stdout + result.stderr
    (run,) = store_runs(tmp_path)
    assert run.info.status == "FINISHED"
    per_class = {k: v for k, v in run.data.metrics.items() if k.startswith("prep/boxes/train/")}
    assert len(per_class) == 3, sorted(run.data.metrics)  # every class's metric, none lost
    originals = {v for k, v in run.data.tags.items() if k.startswith("sentinel.renamed.")}
    assert {f"prep/boxes/train/{name}" for name in ("o'clock", "c++")} <= originals


@pytest.mark.slow
def test_a_run_whose_artefacts_cannot_be_stored_still_ends_finished_and_says_so(tmp_path):
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "mlartifacts").write_text("a file where MLflow keeps its artefacts' folder\n")
    args = ["mode=prep", "merge.samples_grid=0", f"data_dir={tmp_path}/data", "hydra.run.dir=outputs/run"]
    result = run_train(args, cwd=tmp_path, timeout=HANG_GUARD_S * 3)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "not fully tracked: logging" in result.stdout and str(tmp_path / "outputs" / "mlflow.db") in result.stdout
    (run,) = store_runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.metrics["prep/kept"] > 0  # what came before the failure


def test_names_mlflow_refuses_are_made_valid_in_one_place():
    from sentinel.runtime.tracking.names import metric_name, model_name

    assert metric_name("metrics/mAP50-95(B)") == "metrics/mAP50-95B"
    assert metric_name("test/o'clock/recall") == "test/o_clock/recall" and metric_name("prep/c++") == "prep/c__"
    assert metric_name("test/../recall") == "test/__/recall"
    assert model_name("det:v2") == "det_v2" and model_name("a/b") == "a_b"


def test_a_failing_job_does_not_stop_the_sweep_which_ends_with_the_list_of_failed_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "mode=prep", "merge.samples_grid=0", "tracking=none", "merge.include=[gun],[no_such_class],[knife]"]
    result = run_train([*args, f"data_dir={tmp_path}/data", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (sweep / "0" / "prep_result.json").is_file() and (sweep / "2" / "prep_result.json").is_file()
    assert f"error: sweep: 1 of 3 jobs failed ({sweep})" in result.stderr
    (listed,) = [line for line in result.stderr.splitlines() if line.startswith("  job ")]
    assert listed.startswith("  job 1 (") and "merge.include=[no_such_class]" in listed and "merge.include" in listed


@pytest.mark.slow
def test_sigterm_during_a_fine_tune_ends_it_as_ctrl_c_does(tmp_path):
    import json
    import os
    import signal
    import time

    from conftest import start_train

    run_dir = tmp_path / "outputs" / "ft"
    args = ["experiment=demo", "mode=finetune", "model.imgsz=32", "model.epochs=300", "model.patience=300"]
    process = start_train([*args, f"data_dir={tmp_path}/data", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    last = run_dir / "finetune" / "weights" / "last.pt"
    # The moment is the first checkpoint seen on disk; the sleep is only how often to look (a hang is bounded
    # by pytest's own timeout, not by a clock here).
    while process.poll() is None and not last.is_file():  # renamed into place
        time.sleep(0.2)
    assert process.poll() is None, "the fine-tune ended before its first checkpoint was seen"
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(timeout=300) == 143
    state = json.loads((run_dir / "finetune_state.json").read_text())
    assert state["status"] != "done" and last.is_file()  # resumable from its last.pt
    assert json.loads((run_dir / "run_status.json").read_text())["status"] == "KILLED"
    log = (run_dir / "train.log").read_text()
    assert "interrupted (SIGTERM)" in log and "Traceback" not in log.split("interrupted (SIGTERM)")[-1]
    (run,) = store_runs(tmp_path, "finetune", experiment="demo")
    assert run.info.status == "KILLED"


def mine_dataset(tmp_path: Path) -> list[str]:
    """A user's YOLO folder `mine` (tmp_path/src) and the overrides that select it; returns the overrides."""
    from builders import jpeg_bytes, make_source

    files = {f"{i}.jpg": (jpeg_bytes(i), f"{i % 2} 0.5 0.5 0.2 0.2\n") for i in range(4)}
    val = {"v.jpg": (jpeg_bytes(50), "0 0.5 0.5 0.2 0.2\n")}
    root = make_source(tmp_path / "src", ["gun", "knife"], {"train": files, "val": val})
    conf = tmp_path / "conf" / "datasets"
    conf.mkdir(parents=True, exist_ok=True)
    conf.joinpath("mine.yaml").write_text(
        f"# @package datasets\ndefaults:\n  - /sentinel/source/yolo@mine\n  - _self_\nmine:\n  path: {root}\n"
    )
    return [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "datasets=[mine]", "merge.samples_grid=0"]


def records_of(run_dir: Path) -> dict[str, bytes]:
    names = ("config_resolved.yaml", "prep_report.json", "prep_result.json", "run_status.json", "tracking.json")
    return {name: (run_dir / name).read_bytes() for name in names}


@pytest.mark.slow
@pytest.mark.parametrize("change", ["other settings", "edited label"])
def test_a_rerun_in_a_finished_run_folder_never_changes_its_records(tmp_path, change):
    args = [*mine_dataset(tmp_path), "mode=prep", f"data_dir={tmp_path}/data", "hydra.run.dir=outputs/run"]
    assert run_train(args, cwd=tmp_path).returncode == 0
    run_dir = tmp_path / "outputs" / "run"
    before = records_of(run_dir)
    if change == "edited label":
        (tmp_path / "src" / "labels" / "train" / "0.txt").write_text("1 0.4 0.4 0.2 0.2\n")
        result = run_train(args, cwd=tmp_path)
        one_error(result, "already holds a prep run on other inputs")
    else:
        result = run_train([*args, "merge.exclude=[knife]"], cwd=tmp_path)
        assert "merge.exclude" in one_error(result, "holds a finished run with other settings")
    assert records_of(run_dir) == before
    (finished, *others) = sorted(store_runs(tmp_path), key=lambda r: r.info.start_time)
    assert finished.info.status == "FINISHED" and "merge.exclude" not in str(finished.data.params.get("merge.exclude"))
    assert finished.data.params["merge.exclude"] == "[]" and all(r.info.status != "RUNNING" for r in others)


@pytest.mark.slow
def test_a_second_live_run_in_the_same_folder_is_refused(tmp_path):
    import json
    import time

    from conftest import kill_process_tree, start_train

    run_dir = tmp_path / "outputs" / "busy"
    args = ["experiment=demo", "mode=finetune", "model.imgsz=32", "model.epochs=300", "tracking=none"]
    first = start_train([*args, f"data_dir={tmp_path}/data", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    try:
        status = run_dir / "run_status.json"
        deadline = time.monotonic() + 300  # a bound on waiting for the first run to start, not a speed check
        while first.poll() is None and time.monotonic() < deadline and not status.is_file():
            time.sleep(0.2)
        assert first.poll() is None and json.loads(status.read_text())["status"] == "RUNNING"
        second = run_train(["mode=prep", f"data_dir={tmp_path}/data", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
        assert f"pid {first.pid}" in one_error(second, "is in use by another run")
        assert json.loads(status.read_text())["mode"] == "finetune"  # the first run's record, untouched
    finally:
        kill_process_tree(first)


def test_a_tracking_uri_that_answers_but_is_not_mlflow_is_named_at_start_up(tmp_path):
    import http.server
    import threading

    class NotMlflow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # every page is a web page, /health included, as many servers answer
            body = b"<html><body>welcome</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotMlflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        result = run_train(["mode=prep", f"tracking.uri={uri}", f"data_dir={tmp_path}/data"], cwd=tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert "not as an MLflow tracking server" in one_error(result, "tracking.uri")
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_a_deleted_experiment_is_named_with_the_fix_and_the_run_says_it_is_not_tracked(tmp_path):
    args = ["mode=prep", "merge.samples_grid=0", f"data_dir={tmp_path}/data"]
    assert run_train([*args, "hydra.run.dir=outputs/first"], cwd=tmp_path).returncode == 0
    (first,) = store_runs(tmp_path)
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}").delete_experiment(
        first.info.experiment_id
    )
    result = run_train([*args, "hydra.run.dir=outputs/second"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]  # tracking never ends the work
    shown = result.stdout + result.stderr
    assert "'sentinel'" in shown and "was deleted" in shown and "mlflow experiments restore" in shown
    assert "not fully tracked" in result.stdout


def test_paths_in_the_config_mean_the_launch_folder_whatever_hydra_job_chdir_says(tmp_path):
    args = ["mode=prep", "merge.samples_grid=0", "tracking=none", "data_dir=data", "hydra.run.dir=outputs/r"]
    result = run_train([*args, "hydra.job.chdir=true"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "data" / "merged").is_dir() and not (tmp_path / "outputs" / "r" / "data").exists()


@pytest.mark.parametrize("val", ["empty", "gone"])
def test_an_empty_or_missing_split_folder_is_named_by_its_path(tmp_path, val):
    import shutil

    args = [*mine_dataset(tmp_path), "mode=prep", "tracking=none", f"data_dir={tmp_path}/data"]
    folder = tmp_path / "src" / "images" / "val"
    for image in folder.iterdir():
        image.unlink()
    if val == "gone":
        shutil.rmtree(folder)
    result = run_train([*args, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    said = {"empty": "holds no images", "gone": "does not exist"}[val]
    assert f"{folder} {said}" in one_error(result, "no val images")


def test_two_images_of_one_name_sharing_a_label_file_are_both_left_out_and_counted(tmp_path):
    import json

    from builders import png_bytes

    args = [*mine_dataset(tmp_path), "mode=prep", "tracking=none", f"data_dir={tmp_path}/data"]
    (tmp_path / "src" / "images" / "train" / "0.png").write_bytes(png_bytes(77))  # 0.jpg's label is 0.txt too
    result = run_train([*args, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "run" / "prep_report.json").read_text())
    assert report["skipped_images"]["mine"]["train"] == {"label_file_shared_by_two_images": 2}
    assert report["totals"]["kept"] == 3 + 1  # the other three training images and the validation one
    assert "label_file_shared_by_two_images" in (tmp_path / "run" / "prep_report.md").read_text()


@pytest.mark.slow
def test_a_moved_project_writes_beside_its_store_and_finds_its_earlier_artefacts(tmp_path):
    from mlflow.tracking import MlflowClient

    before, after = tmp_path / "before", tmp_path / "after"
    before.mkdir()
    args = ["mode=prep", "merge.samples_grid=0", "data_dir=data"]
    assert run_train([*args, "hydra.run.dir=outputs/first"], cwd=before).returncode == 0
    before.rename(after)  # `mv`
    assert run_train([*args, "hydra.run.dir=outputs/second"], cwd=after).returncode == 0
    assert not before.exists()  # nothing written at the old path
    client = MlflowClient(tracking_uri=f"sqlite:///{after / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sentinel").experiment_id])
    assert len(runs) == 2
    for run in runs:
        assert run.info.artifact_uri.startswith((after / "outputs" / "mlartifacts").as_uri())
        assert "prep_report.md" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.slow
def test_the_paths_group_moves_run_folders_and_the_local_store(tmp_path):
    """paths.runs and paths.tracking: runs, the local MLflow store and compare's folder scan all follow them, and
    nothing is written under the default outputs/."""
    paths = ["paths.runs=runs", "paths.tracking=store"]
    result = run_train(["mode=prep", "experiment=tiny", f"data_dir={tmp_path}/data", *paths], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "runs").glob("*/*/prep_report.md"))) == 1
    assert (tmp_path / "store" / "mlflow.db").is_file() and (tmp_path / "store" / "mlartifacts").is_dir()
    assert f"sqlite:///{tmp_path}/store/mlflow.db" in result.stdout  # the hint names where the store is
    compared = run_train(["mode=compare", "tracking=none", "compare.metric=prep/kept", *paths], cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert "compare:  1 runs" in compared.stdout  # the prep run, found under paths.runs
    assert not (tmp_path / "outputs").exists()
