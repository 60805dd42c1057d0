"""tracking=mlflow against real MLflow: a `mlflow server` the test starts (SQLite backend, its own artefact
root) and stops by process id, and the default local SQLite store with no server."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from conftest import CONF_DIR, free_port, kill_process_tree, run_train, start_train

pytestmark = pytest.mark.slow
SECRET = "rf-secret-value-5521"  # in the environment of every run: must appear in nothing MLflow stores


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free localhost port; ready when its /health answers, stopped by its pid."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    with open(root / "server.log", "w") as server_log:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlflow", "server"),
                *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
                *("--backend-store-uri", f"sqlite:///{root / 'store.db'}"),
                *("--default-artifact-root", (root / "artifacts").as_uri()),
            ],
            cwd=root,
            stdout=server_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a bound on waiting, not a speed check
        while not _answers(uri) and time.monotonic() < deadline:
            assert server.poll() is None, (root / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        assert _answers(uri), "mlflow server did not answer within 180 s"
        yield uri
    finally:
        kill_process_tree(server)


def _answers(uri: str) -> bool:
    try:
        return requests.get(f"{uri}/health", timeout=2).ok
    except requests.RequestException:
        return False


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def runs_of(client, experiment: str, filter_string: str = ""):
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    return client.search_runs([found.experiment_id], filter_string=filter_string, max_results=1000)


def demo_args(tmp_path: Path, uri: str, experiment: str) -> list[str]:
    return [
        "experiment=demo",
        "mode=all",
        f"data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"tracking.uri={uri}",
        f"tracking.experiment={experiment}",
        *(
            "model.epochs=2",
            "augmentation.close_mosaic=1",
            "model.patience=2",
            "tune.num_samples=2",
            "tune.epochs=2",
            "tune.grace_period=1",
        ),
        *("hardware.num_cpus=2", "merge.samples_grid=4", "export.formats=[torchscript]"),
    ]


@pytest.fixture(scope="module")
def demo_run(mlflow_server, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("tracked_demo")
    result = run_train(
        demo_args(tmp_path, mlflow_server, "demo-tracked"), cwd=tmp_path, env={"ROBOFLOW_API_KEY": SECRET}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = client_for(mlflow_server)
    top = runs_of(client, "demo-tracked", "tags.`sentinel.mode` = 'all'")
    assert len(top) == 1
    return tmp_path / "run", client, top[0], result.stdout


def test_the_run_has_the_resolved_config_and_its_lineage_tags(demo_run):
    run_dir, _, run, stdout = demo_run
    params, tags = run.data.params, run.data.tags
    assert params["model.imgsz"] == "64" and params["tune.num_samples"] == "2" and params["tracking.backend"]
    assert tags["sentinel.run_dir"] == str(run_dir)
    assert tags["sentinel.dataset"] == json.loads((run_dir / "prep_result.json").read_text())["fingerprint"]
    assert tags["sentinel.source.demo_roboflow"].startswith("demo ")
    assert tags["sentinel.version.ultralytics"][0].isdigit() and tags["sentinel.version.torch"][0].isdigit()
    assert json.loads((run_dir / "tracking.json").read_text())["run_id"] == run.info.run_id
    assert run.info.status == "FINISHED" and run.info.run_id in stdout
    # Plain values, as config_resolved.yaml writes them: a search `params.mode = 'all'` finds the run.
    assert (params["mode"], params["merge.balance"], params["merge.on_bad_label"]) == ("all", "none", "skip_line")


def test_the_fine_tunes_params_are_the_values_ultralytics_applied(demo_run):
    run_dir, _, run, _ = demo_run
    params = run.data.params
    applied = yaml.safe_load((run_dir / "applied_args.yaml").read_text())["applied"]
    best = yaml.safe_load((run_dir / "best_hparams.yaml").read_text())
    assert params["applied.optimizer"] == "SGD" == applied["optimizer"]
    assert float(params["applied.lr0"]) == pytest.approx(best["lr0"]) == applied["lr0"]


def test_prep_counts_and_finetune_epochs_and_test_metrics_are_metrics(demo_run):
    run_dir, client, run, _ = demo_run
    report = json.loads((run_dir / "prep_report.json").read_text())
    assert run.data.metrics["prep/kept"] == report["totals"]["kept"]
    history = client.get_metric_history(run.info.run_id, "metrics/mAP50-95B")
    assert sorted(m.step for m in history) == [1, 2]  # one point per fine-tune epoch, step = epoch
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/box_loss")] == [1, 2]
    assert "best/metrics/mAP50-95B" in run.data.metrics  # Ultralytics' final validation of best.pt
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run.data.metrics["test/map50"] == pytest.approx(metrics["means"]["map50"])
    first = metrics["classes"][0]
    assert run.data.metrics[f"test/{first['class']}/recall"] == pytest.approx(first["recall"])


def test_every_trial_is_a_nested_run_with_its_values_epochs_and_ending(demo_run):
    _, client, run, _ = demo_run
    trials = runs_of(client, "demo-tracked", f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert len(trials) == 2
    assert {t.data.tags["sentinel.ended"] for t in trials} <= {"completed", "stopped by ASHA"}
    best = [t for t in trials if t.data.tags["sentinel.best_trial"] == "true"]
    assert len(best) == 1 and run.data.tags["sentinel.best_trial"] == best[0].data.tags["sentinel.trial"]
    for trial in trials:
        assert {"lr0", "fliplr", "mosaic"} <= set(trial.data.params)
        assert client.get_metric_history(trial.info.run_id, "val/box_loss")
        # Named by its number and values, and timed as it ran (Ray's results), not as it was logged (~20 ms).
        number, values = trial.info.run_name.split(" · ")
        assert re.fullmatch(r"trial [12]", number) and f"lr0={float(trial.data.params['lr0']):.3g}" in values
        assert trial.info.end_time - trial.info.start_time > 1000
    assert len({t.info.run_name for t in trials}) == 2


def test_reports_weights_and_exports_are_artifacts_and_the_weights_a_model_version(demo_run, mlflow_server, tmp_path):
    run_dir, client, run, _ = demo_run
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"sentinel.pt", "metrics.json", "prep_report.md", "best_hparams.yaml", "tune_report.md"} <= top
    assert "export" in top and "ray_tune" not in top
    versions = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    assert len(versions) == 1 and versions[0].name == "sentinel" and versions[0].source.endswith("/model")
    assert versions[0].tags["dataset"] == run.data.tags["sentinel.dataset"]
    description = versions[0].description  # the registry shows the card, and why the version is or is not champion
    assert description.startswith((run_dir / "model_card.md").read_text()) and "\n## Registry\n" in description
    # As the README loads it: the version is an MLflow model whose artefacts are the weights and their card.
    import mlflow
    from ultralytics import YOLO

    mlflow.set_tracking_uri(mlflow_server)
    folder = Path(mlflow.artifacts.download_artifacts("models:/sentinel/latest", dst_path=str(tmp_path)))
    assert {"MLmodel", "pyfunc_model.py", "requirements.txt"} <= {p.name for p in folder.iterdir()}
    assert sorted(p.name for p in (folder / "artifacts").iterdir()) == ["model_card.json", "sentinel.pt"]
    assert YOLO(str(folder / "artifacts" / "sentinel.pt")).names == YOLO(str(run_dir / "sentinel.pt")).names


def image_frame(paths: list[Path]):
    import base64

    import pandas as pd

    return pd.DataFrame({"image": [base64.b64encode(p.read_bytes()).decode() for p in paths]})


def ultralytics_rows(weights: Path, paths: list[Path], conf: float) -> list[tuple]:
    from ultralytics import YOLO

    rows = []
    for index, result in enumerate(
        YOLO(str(weights)).predict([str(p) for p in paths], imgsz=64, conf=conf, verbose=False)
    ):
        for cls, score in zip(result.boxes.cls.tolist(), result.boxes.conf.tolist(), strict=True):
            rows.append((index, result.names[int(cls)], round(score, 3)))
    return rows


def test_the_registered_version_loads_with_mlflow_pyfunc_and_answers_as_ultralytics(demo_run, mlflow_server):
    import mlflow.pyfunc

    run_dir = demo_run[0]
    images = sorted((run_dir.parent / "data" / "merged").glob("*/images/test/*.jpg"))[:4]
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model("models:/sentinel@champion")
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["image"]
    boxes = model.predict(image_frame(images), params={"conf": 0.001})
    assert list(boxes.columns) == ["image_index", "class_name", "class_id", "confidence", "x1", "y1", "x2", "y2"]
    ours = [(r.image_index, r.class_name, round(r.confidence, 3)) for r in boxes.itertuples()]
    assert ours == ultralytics_rows(run_dir / "sentinel.pt", images, 0.001) and ours


def test_mlflow_models_serve_answers_with_the_registered_version(demo_run, mlflow_server, tmp_path):
    run_dir = demo_run[0]
    images = sorted((run_dir.parent / "data" / "merged").glob("*/images/test/*.jpg"))[:2]
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    with open(tmp_path / "serve.log", "w") as serve_log:
        server = subprocess.Popen(
            [
                Path(sys.executable).parent / "mlflow",
                "models",
                "serve",
                "-m",
                "models:/sentinel/1",
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=serve_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        while True:  # until the server answers /ping (0.5 s: how often to ask); pytest's timeout bounds a hang
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        frame = image_frame(images)
        body = {"dataframe_split": frame.to_dict(orient="split", index=False), "params": {"conf": 0.001}}
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=120)
        assert answer.ok, answer.text[:2000]
        rows = answer.json()["predictions"]
        ours = [(r["image_index"], r["class_name"], round(r["confidence"], 3)) for r in rows]
        assert ours == ultralytics_rows(run_dir / "sentinel.pt", images, 0.001) and ours
    finally:
        kill_process_tree(server)


def test_predict_with_a_models_uri_is_a_tracked_run_with_its_detections(demo_run, mlflow_server, tmp_path):
    run_dir, client, _, _ = demo_run
    images = sorted((run_dir.parent / "data" / "merged").glob("*/images/test/*.jpg"))
    result = run_train(
        [
            *(
                "experiment=demo",
                "mode=predict",
                f"data_dir={run_dir.parent / 'data'}",
                f"hydra.run.dir={tmp_path / 'run'}",
            ),
            *(f"tracking.uri={mlflow_server}", "tracking.experiment=demo-tracked", "tracking.wait=true"),
            *("predict.weights=models:/sentinel@champion", f"predict.source={images[0].parent}", "predict.conf=0.001"),
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "predict_report.json").read_text())
    assert report["weights_sha256"] == hashlib.sha256((run_dir / "sentinel.pt").read_bytes()).hexdigest()
    run = runs_of(client, "demo-tracked", "tags.`sentinel.mode` = 'predict'")[0]
    assert run.info.status == "FINISHED" and run.data.metrics["predict/frames"] == len(images)
    assert run.data.params["predict.weights_sha256"] == report["weights_sha256"]
    artefacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"detections.jsonl", "predict_report.md", "predict_report.json"} <= artefacts
    assert "registered_model" not in artefacts  # in the registry already


def test_the_runs_list_shows_mode_preset_and_time_and_the_run_page_the_test_table(demo_run):
    run_dir, _, run, _ = demo_run
    assert re.fullmatch(r"all · demo · \d\d:\d\d:\d\d", run.info.run_name)
    assert run.data.tags["mlflow.note.content"] == (run_dir / "metrics.md").read_text()


def test_the_model_card_agrees_with_metrics_the_prep_report_and_the_weights(demo_run):
    run_dir = demo_run[0]
    card = json.loads((run_dir / "model_card.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    report = json.loads((run_dir / "prep_report.json").read_text())
    assert card["scores"]["means"] == metrics["means"] and card["scores"]["classes"] == metrics["classes"]
    train_boxes = sum(sum(per_split["train"].values()) for per_split in report["boxes"].values())
    assert sum(row["boxes"]["train"] for row in card["detects"]) == train_boxes
    assert card["known_limits"]["skipped_label_lines"] == report["totals"]["skipped_label_lines"]
    assert card["weights_sha256"] == hashlib.sha256((run_dir / "sentinel.pt").read_bytes()).hexdigest()
    assert card["lineage"][-1] == f"weights sha256 {card['weights_sha256']}"
    assert card["data"]["fingerprint"] == json.loads((run_dir / "prep_result.json").read_text())["fingerprint"]
    assert (run_dir / "export" / "model_card.json").read_text() == (run_dir / "model_card.json").read_text()
    assert "## How it scores" in (run_dir / "model_card.md").read_text()


def test_no_secret_in_any_param_or_tag(demo_run):
    client = demo_run[1]
    for each in runs_of(client, "demo-tracked"):
        text = json.dumps({**each.data.params, **each.data.tags})
        assert SECRET not in text


def test_a_multirun_is_one_run_per_job_tagged_with_the_sweep(mlflow_server, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_train(
        [
            "-m",
            "mode=prep",
            "seed=0,1",
            f"data_dir={tmp_path / 'data'}",
            f"hydra.sweep.dir={sweep}",
            f"tracking.uri={mlflow_server}",
            "tracking.experiment=sweep-tagged",
            "merge.samples_grid=0",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = runs_of(client_for(mlflow_server), "sweep-tagged")
    assert sorted(r.data.tags["sentinel.job_num"] for r in runs) == ["0", "1"]
    assert {r.data.tags["sentinel.sweep_dir"] for r in runs} == {str(sweep)}


def test_the_default_local_store_needs_no_server(tmp_path):
    result = run_train(["mode=prep", "merge.samples_grid=0", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    store = tmp_path / "outputs" / "mlflow.db"
    runs = runs_of(client_for(f"sqlite:///{store}"), "sentinel")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.metrics["prep/kept"] > 0
    assert f"mlflow ui --backend-store-uri sqlite:///{store}" in result.stdout
    spent = json.loads((tmp_path / "run" / "tracking.json").read_text())["seconds"]  # what benchmarks/ reads
    assert spent["start"] > 0 and spent["logging"] > 0
    assert not list((tmp_path / "outputs").glob("pending/*"))  # no journal left, whether train.py waited or not


def test_a_short_command_ends_before_its_run_is_recorded_and_a_machine_stop_then_loses_nothing(tmp_path):
    args = ["mode=prep", "merge.samples_grid=0", f"data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'short'}"]
    # The service is held before it says it is ready, as if it were still importing MLflow when train.py ends.
    process = start_train(args, cwd=tmp_path, env={"SENTINEL_HOLD_AT": f"tracking.ready:{tmp_path / 'never'}"})
    assert process.wait(timeout=300) == 0  # train.py did not wait for MLflow
    (journal,) = (tmp_path / "outputs" / "pending").glob("*.journal")  # what the service was sent, on disk
    service = psutil.Process(int(journal.name.split("-")[0]))
    record = tmp_path / "short" / "tracking.json"  # written once the service has opened the run, then it holds
    while not record.is_file() and service.is_running():  # the moment: the record on disk (0.1 s: how often to look)
        time.sleep(0.1)
    service.kill()  # the machine stops: the run is open in MLflow, and nothing more of it recorded
    service.wait(timeout=60)
    store = client_for(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    run_id = json.loads(record.read_text())["run_id"]
    assert store.get_run(run_id).info.status == "RUNNING" and not store.get_run(run_id).data.metrics

    result = run_train(["mode=compare", "compare.metric=prep/kept", "hydra.run.dir=cmp"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = store.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["prep/kept"] > 0  # recorded from the journal
    assert run.data.params["mode"] == "prep" and not journal.exists()
    assert [r.info.run_id for r in runs_of(store, "sentinel", "tags.`sentinel.mode` = 'prep'")] == [run_id]
    assert run.info.run_name in (tmp_path / "cmp" / "compare.md").read_text()  # compare waited for it


def test_an_unreachable_server_fails_at_start_up_in_one_line(tmp_path):
    result = run_train(
        ["mode=all", f"tracking.uri=http://127.0.0.1:{free_port()}", "tracking.timeout_s=5"], cwd=tmp_path
    )
    assert result.returncode == 1
    assert "tracking.uri" in result.stderr and "tracking=none" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "data").exists()  # before any download


def test_a_run_whose_train_py_is_killed_is_marked_killed_by_its_tracking_service(tmp_path):
    process = start_train(
        ["mode=prep", f"data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'killed'}"],
        cwd=tmp_path,
        env={"SENTINEL_KILL_AFTER": "merge.batch:1"},  # dies by SIGKILL in the middle of the build
    )
    assert process.wait(timeout=300) == -signal.SIGKILL
    record, status = tmp_path / "killed" / "tracking.json", "no run yet"
    deadline = time.monotonic() + 180  # a bound on waiting for the service, not a speed check
    while status in ("no run yet", "RUNNING") and time.monotonic() < deadline:
        if record.is_file():  # the service has opened the store and the run
            store = client_for(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
            status = store.get_run(json.loads(record.read_text())["run_id"]).info.status
        time.sleep(0.5)
    assert status == "KILLED"


def test_a_run_whose_tracking_service_died_is_marked_killed_by_the_next_start(tmp_path):
    data = f"data_dir={tmp_path / 'data'}"
    first = run_train(  # tracking.wait: train.py waits for its service at the end, however short the run
        ["mode=prep", data, "tracking.wait=true", f"hydra.run.dir={tmp_path / 'first'}"],
        cwd=tmp_path,
        env={"SENTINEL_KILL_AFTER": "tracking.opened:1"},  # the service dies by SIGKILL once the run is open
    )
    assert first.returncode == 0, first.stderr[-3000:]  # the training does not depend on its tracking
    assert "tracking service stopped" in first.stdout + first.stderr
    killed_id = json.loads((tmp_path / "first" / "tracking.json").read_text())["run_id"]
    client = client_for(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    assert client.get_run(killed_id).info.status == "RUNNING"  # nothing could mark it: SIGKILL
    result = run_train(["mode=prep", data, f"hydra.run.dir={tmp_path / 'next'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert client.get_run(killed_id).info.status == "KILLED"


@pytest.fixture(scope="module")
def three_preps(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """Three tracked preps that differ in merge.exclude, in one launch folder: it, and each one's box count."""
    tmp_path = tmp_path_factory.mktemp("three_preps")
    boxes = {}
    for exclude in ("[gun]", "[knife]", "[]"):
        run_dir = f"outputs/exclude{len(boxes)}"
        result = run_train(
            ["mode=prep", f"merge.exclude={exclude}", "merge.samples_grid=0", f"hydra.run.dir={run_dir}"], cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr[-3000:]
        boxes[exclude] = json.loads((tmp_path / run_dir / "prep_report.json").read_text())["totals"]["boxes"]
    return tmp_path, boxes


@pytest.mark.parametrize("backend", ["mlflow", "none"])
def test_compare_names_the_key_that_differs_and_each_runs_metric(three_preps, backend):
    tmp_path, boxes = three_preps  # compare reads them from MLflow's store, or from their run folders (none)
    run_dir = f"cmp_{backend}"  # beside outputs/, where compare looks for run folders
    args = [
        "mode=compare",
        "compare.metric=prep/boxes",
        "compare.runs=3",
        f"tracking={backend}",
        f"hydra.run.dir={run_dir}",
    ]
    result = run_train(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / run_dir / "compare.md").read_text()
    assert "Config keys that differ between these runs: `merge.exclude`." in report
    rows = [line for line in report.splitlines() if line.startswith("| ")][1:]  # after the header
    assert len(rows) == 3
    for exclude, count in boxes.items():
        shown = json.dumps(json.loads(exclude.replace("gun", '"gun"').replace("knife", '"knife"')))
        assert any(f"| {count} | {shown} |" in row for row in rows), (exclude, count, report)
    assert [int(row.split(" | ")[1]) for row in rows] == sorted(boxes.values(), reverse=True)  # best first
    page = (tmp_path / run_dir / "compare.html").read_text()
    assert f"file://{tmp_path}/outputs/exclude0" in page and (tmp_path / run_dir / "compare.png").stat().st_size > 0
    assert ("/#/experiments/" in report) is (backend == "mlflow")  # each MLflow run's page


def test_compare_right_after_a_presets_run_finds_it_without_naming_an_experiment(tmp_path):
    prep = ["experiment=demo", "mode=prep", "merge.samples_grid=0", "hydra.run.dir=outputs/demo"]
    assert run_train(prep, cwd=tmp_path).returncode == 0  # recorded in the MLflow experiment `demo`
    wrong_metric = run_train(["mode=compare", "hydra.run.dir=cmp0"], cwd=tmp_path)  # test/map50-95: none yet
    assert wrong_metric.returncode == 1 and "'compare.metric'" in wrong_metric.stderr
    assert "Fix: use one of prep/" in wrong_metric.stderr  # never an empty Fix
    result = run_train(["mode=compare", "compare.metric=prep/kept", "hydra.run.dir=cmp"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in (tmp_path / "cmp" / "compare.md").read_text().splitlines() if line.startswith("| ")]
    assert len(rows) == 2 and rows[1].startswith("| demo: prep ")  # the header, then the demo's run
    sweep = tmp_path / "multirun" / "empty"  # a sweep folder with no run of the demo's in it
    sweep.mkdir(parents=True)
    nothing = run_train(["mode=compare", "compare.experiment=demo", f"compare.sweep={sweep}"], cwd=tmp_path)
    assert nothing.returncode == 1 and f"experiment 'demo', sweep {sweep}" in nothing.stderr


def test_doctor_reports_an_unreachable_server_next_to_the_other_checks(tmp_path):
    uri = f"tracking.uri=http://127.0.0.1:{free_port()}"
    result = run_train(["mode=doctor", uri, "tracking.timeout_s=5", "hydra.run.dir=doc"], cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    table = (tmp_path / "doc" / "doctor.md").read_text()
    assert "| tracking | PROBLEM |" in table and "| Ray | OK |" in table
    assert "tracking: start the server" in result.stderr


OPEN_STORE = """
import sys, time
from pathlib import Path
from hydra import compose, initialize_config_dir
from sentinel.config.schema import register_configs
from sentinel.config.validate import typed_config
from sentinel.runtime.tracking.client import start_tracking
import mlflow.tracking  # imported before the wait, so the processes reach the store together

conf, launch, run, go = sys.argv[1:]
register_configs()
with initialize_config_dir(config_dir=conf, version_base="1.3"):
    cfg = typed_config(compose(config_name="config", overrides=["tracking=mlflow"]))
while not Path(go).exists():  # every process imports MLflow first, then all open the store together
    time.sleep(0.01)
start_tracking(cfg, Path(run), Path(launch)).end("FINISHED")
"""


def test_jobs_that_open_a_new_local_store_at_once_all_get_their_run(tmp_path):
    """A parallel sweep's jobs create the default SQLite store together (MLflow migrates it unlocked)."""
    go = tmp_path / "go"
    for i in range(4):
        (tmp_path / f"run{i}").mkdir()
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_STORE, str(CONF_DIR), str(tmp_path), str(tmp_path / f"run{i}"), str(go)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    go.touch()
    errors = [job.communicate(timeout=300)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0, 0, 0], "\n".join(errors)[-3000:]
    store = f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    assert len(runs_of(client_for(store), "sentinel")) == 4
