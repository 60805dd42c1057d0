"""mode=tune end to end on the demo data: real Ray local cluster, real Ultralytics training, tiny images."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from builders import last_epoch_rate
from conftest import EXPECTED_SKIP, UNTRACKED, kill_process_tree, run_train, start_train

pytestmark = pytest.mark.slow

TINY = [
    "experiment=demo",
    UNTRACKED,
    "model.imgsz=64",
    "model.batch=16",
    "tune.epochs=3",
    "tune.grace_period=1",
    "hardware.cpu_per_trial=1",
    "hardware.max_concurrent_trials=2",
    "hardware.num_cpus=2",
    "merge.samples_grid=0",
]


def tune_args(tmp_path: Path, run: str, *extra: str) -> list[str]:
    return ["mode=tune", *TINY, f"data_dir={tmp_path}/data", f"hydra.run.dir={tmp_path}/{run}", *extra]


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "tune" / "results.csv") as handle:
        return list(csv.DictReader(handle))


def trial_intervals(run_dir: Path) -> list[tuple[float, float]]:
    """(start, end) of every trial from Ray's per-trial result.json (end of each epoch, its duration)."""
    intervals = []
    for result_file in (run_dir / "ray_tune").glob("*/result.json"):
        lines = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if lines:
            intervals.append((lines[0]["timestamp"] - lines[0]["time_this_iter_s"], lines[-1]["timestamp"]))
    return intervals


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("tune")
    # The search's local Ray keeps its session in a temp folder of this run's own (short: Ray's socket paths
    # have a length limit), so a test can see what it leaves there.
    ray_temp = Path(tempfile.mkdtemp(prefix="sntl-", dir="/tmp"))
    try:
        result = run_train(
            tune_args(tmp_path, "run", "tune.num_samples=4"), cwd=tmp_path, env={"RAY_TMPDIR": str(ray_temp)}
        )
        assert result.returncode == 0, result.stderr[-3000:]
        (tmp_path / "console.txt").write_text(result.stdout + result.stderr)
        left = {
            "sessions": len(list(ray_temp.glob("ray/session_2*"))),
            "weights": list(map(str, ray_temp.rglob("*.pt"))),
        }
        (tmp_path / "left_in_ray_temp.json").write_text(json.dumps(left))
    finally:
        shutil.rmtree(ray_temp, ignore_errors=True)
    return tmp_path / "run"


def test_trial_weights_are_kept_in_the_run_folder_and_not_left_in_rays_temp_folder(finished_run):
    assert len(list((finished_run / "ray_tune").glob("train_trial_*/train/weights/best.pt"))) == 4
    left = json.loads((finished_run.parent / "left_in_ray_temp.json").read_text())
    assert left == {"sessions": 1, "weights": []}  # the search's Ray session is there; its staging copies are not


def test_trials_log_to_their_own_folder_not_the_console(finished_run):
    console = (finished_run.parent / "console.txt").read_text()
    assert "train_trial pid=" not in console and "Traceback" not in console
    trial_logs = list((finished_run / "ray_tune").glob("*/trial.log"))
    assert len(trial_logs) == 4 and all(log.stat().st_size > 0 for log in trial_logs)


def test_the_console_shows_every_trial_epoch_with_the_time_left_and_no_ray_box_or_warning(finished_run):
    console = (finished_run.parent / "console.txt").read_text()
    shown = set(
        re.findall(r"tune: trial (\d)/4, epoch (\d)/3: val/box_loss [\d.]+ \(best so far [\d.]+\); search: ", console)
    )
    reported = set()
    for result in (finished_run / "ray_tune").glob("*/result.json"):
        epochs = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        number = str(int(epochs[0]["trial_id"].rsplit("_", 1)[-1]) + 1)
        reported |= {(number, str(epoch["training_iteration"])) for epoch in epochs}
    assert reported and reported <= shown, sorted(reported - shown)
    assert "about" in console and "left" in console  # an estimate of the time left
    for ray_noise in ("Configuration for experiment", "View detailed results", "WARNING", "Token authentication"):
        assert ray_noise not in console, ray_noise


def test_every_trial_trains_with_its_sampled_values_read_back_from_ultralytics(finished_run):
    completed = 0
    for row in read_rows(finished_run):
        trial = Path(row["path"])
        record = yaml.safe_load((trial / "applied_args.yaml").read_text())
        assert record["differences"] == [], record["differences"]
        applied = record["applied"]
        assert applied["optimizer"] == "SGD" and applied["lr0"] == pytest.approx(float(row["lr0"]))
        assert applied["mosaic"] == pytest.approx(float(row["mosaic"]))  # not closed before the first epoch
        assert applied["close_mosaic"] == 1  # the demo fine-tune's 10 of 40 epochs, in a 3-epoch trial
        assert "ignoring 'lr0" not in (trial / "trial.log").read_text()
        if row["ended"] == "completed":
            used, predicted = last_epoch_rate(trial / "train" / "results.csv", applied)
            assert used == pytest.approx(predicted, rel=1e-3)
            completed += 1
    assert completed >= 1
    best = yaml.safe_load((finished_run / "best_hparams.yaml").read_text())
    assert set(best) == {"lr0", "fliplr", "mosaic"}


def test_results_table_has_every_trial_within_the_space(finished_run):
    rows = read_rows(finished_run)
    assert len(rows) == 4
    for row in rows:
        assert 1e-3 <= float(row["lr0"]) <= 1e-1 and 0.0 <= float(row["fliplr"]) <= 1.0
        assert float(row["mosaic"]) in (0.0, 1.0)
        assert 1 <= int(row["epochs"]) <= 3 and row["ended"] in ("completed", "stopped early")
    assert any(row["ended"] == "completed" for row in rows)


def test_best_hparams_are_the_best_rows_values(finished_run):
    rows = read_rows(finished_run)
    best = min(rows, key=lambda r: float(r["best_metric"]))  # experiment=demo ranks by val/box_loss, min
    hparams = yaml.safe_load((finished_run / "best_hparams.yaml").read_text())
    assert set(hparams) == {"lr0", "fliplr", "mosaic"}  # only training arguments, no data/epochs
    assert hparams == pytest.approx({k: float(best[k]) for k in hparams})


def test_best_trial_is_the_one_ray_picks(finished_run):
    from ray.tune import ExperimentAnalysis, ResultGrid

    grid = ResultGrid(ExperimentAnalysis(str(finished_run / "ray_tune")))  # Ray's own reading of the search
    best = grid.get_best_result(metric="val/box_loss", mode="min", scope="all")  # what experiment=demo ranks by
    hparams = yaml.safe_load((finished_run / "best_hparams.yaml").read_text())
    assert hparams == pytest.approx({k: best.config[k] for k in hparams})
    assert Path(best.path).name in (finished_run / "tune_report.md").read_text()


def test_plots_report_and_best_weights_exist(finished_run):
    for name in ("tune/metric_per_epoch.png", "tune/metric_vs_params.png", "tune_report.md", "tune/best_trial/best.pt"):
        assert (finished_run / name).is_file(), name
    assert "Best trial" in (finished_run / "tune_report.md").read_text()


def test_same_seed_samples_the_same_trials(finished_run, tmp_path):
    # Also the `random` case of test_every_search_alg_runs_a_real_search_one_trial_at_a_time_when_asked (the
    # default search_alg, which finished_run searched with): a second random search, one trial at a time.
    args = tune_args(tmp_path, "again", "tune.num_samples=4", "tune.epochs=2", "hardware.max_concurrent_trials=1")
    result = run_train(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    def sampled(run_dir: Path) -> list[tuple[str, ...]]:
        return sorted((r["lr0"], r["fliplr"], r["mosaic"]) for r in read_rows(run_dir))

    assert sampled(tmp_path / "again") == sampled(finished_run)
    assert_a_search_one_trial_at_a_time(tmp_path / "again", "random", trials=4)


# Starts a local Ray in a fresh process, then leaves ray_shutting_down(started) after some work: whether the
# driver was still connected inside, and whether Ray and its processes were gone once it had left.
SHUT_DOWN_MEANWHILE = """
import json, sys, psutil, ray
from sentinel.runtime.raycluster import ray_shutting_down

started = sys.argv[1] == "started"
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
processes = [p.process.pid for infos in ray._private.worker._global_node.all_processes.values() for p in infos]
with ray_shutting_down(started):
    sum(range(10**6))  # the report, meanwhile
seen = {"initialized_after": ray.is_initialized(), "alive_after": sum(psutil.pid_exists(p) and
        psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in processes), "processes": len(processes)}
ray.shutdown()
print("SEEN=" + json.dumps(seen))
"""


def seen_in_a_fresh_ray_process(script: str, *args: str, **env: str) -> dict:
    """Run `script` in a fresh Python with a Ray temp folder of its own; what it printed after SEEN=."""
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="sntl-", dir="/tmp"), **env}
    try:
        result = subprocess.run(
            [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=180
        )
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.split("SEEN=")[-1])


@pytest.mark.parametrize("started", ["started", "joined"])
def test_a_ray_the_search_started_has_shut_down_when_its_report_is_written(started):
    seen = seen_in_a_fresh_ray_process(SHUT_DOWN_MEANWHILE, started)
    assert seen["processes"] >= 3  # the GCS, the raylet, the monitor and the others
    if started == "started":
        assert not seen["initialized_after"] and seen["alive_after"] == 0
    else:  # a Ray this run joined is not its to stop
        assert seen["initialized_after"] and seen["alive_after"] == seen["processes"]


# Starts a local Ray as a search does, in a fresh process: which kinds of process Ray started, and that a
# task runs on it.
START_LOCAL_RAY = """
import json, ray
from omegaconf import OmegaConf
from sentinel.runtime.raycluster import connect_ray

assert connect_ray(OmegaConf.create({"ray_address": "", "num_cpus": 1, "num_gpus": 0}))
kinds = sorted(ray._private.worker._global_node.all_processes)
ran = ray.get(ray.remote(lambda: 1).remote())
ray.shutdown()
print("SEEN=" + json.dumps({"kinds": kinds, "ran": ran}))
"""


@pytest.mark.parametrize("usage_stats", ["0", "1"], ids=["usage_stats_off", "usage_stats_on"])
def test_a_local_ray_starts_its_api_server_only_for_usage_stats(usage_stats):
    seen = seen_in_a_fresh_ray_process(START_LOCAL_RAY, RAY_USAGE_STATS_ENABLED=usage_stats)
    assert seen["ran"] == 1
    assert {"gcs_server", "raylet"} <= set(seen["kinds"])  # the names Ray gives its processes
    assert ("dashboard" in seen["kinds"]) == (usage_stats == "1")


def test_two_trials_ran_at_once(finished_run):
    intervals = sorted(trial_intervals(finished_run))
    assert len(intervals) == 4
    overlaps = [a for a, b in itertools.pairwise(intervals) if b[0] < a[1]]
    assert overlaps, intervals


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["+search_space.lr00={dist: uniform, low: 0.1, high: 0.2}"], "'lr00' is not an Ultralytics training argument"),
        (["+search_space.epochs={dist: randint, low: 1, high: 5}"], "'epochs' is set by Sentinel"),
        (["search_space.fliplr.high=1.5"], "fliplr is a fraction"),
        (["search_space.lr0.low=0.5", "search_space.lr0.high=0.1"], "low (0.5) must be below high (0.1)"),
        (["hardware.ray_address=ray://127.0.0.1:9"], "is not reachable"),
        (["hardware.ray_address=http://127.0.0.1:8265"], "looks like the dashboard URL"),
        (["tune.grace_period=3"], "tune.grace_period"),
    ],
    ids=["unknown_param", "sentinel_param", "fraction", "low_high", "unreachable_ray", "dashboard_url", "grace"],
)
def test_bad_tune_input_fails_before_any_training(tmp_path, extra, message):
    result = run_train(tune_args(tmp_path, "run", *extra), cwd=tmp_path, timeout=120)  # a hang fails
    assert result.returncode == 1
    assert message in result.stderr + result.stdout
    assert not (tmp_path / "run" / "ray_tune").exists()


HAS_HYPEROPT = importlib.util.find_spec("hyperopt") is not None


def assert_a_search_one_trial_at_a_time(run_dir: Path, search_alg: str, trials: int) -> None:
    """`search_alg` made `trials` different suggestions, the report names it, and no two trials overlapped."""
    rows = read_rows(run_dir)
    assert len(rows) == trials and len({r["lr0"] for r in rows}) == trials  # different suggestions
    intervals = sorted(trial_intervals(run_dir))
    # One trial at a time. Ray's timestamps are whole seconds, so "after" is up to one second early.
    assert all(b[0] >= a[1] - 1.0 for a, b in itertools.pairwise(intervals)), intervals
    assert f"search {search_alg}" in (run_dir / "tune_report.md").read_text()


# `random` (the default) is checked by test_same_seed_samples_the_same_trials, whose second search it is.
@pytest.mark.parametrize("search_alg", ["optuna", "hyperopt"])
def test_every_search_alg_runs_a_real_search_one_trial_at_a_time_when_asked(tmp_path, search_alg):
    if search_alg == "hyperopt" and not HAS_HYPEROPT:
        pytest.skip(f"{EXPECTED_SKIP}hyperopt is optional and not installed (pip install hyperopt)")
    args = tune_args(tmp_path, "run", "tune.num_samples=3", f"tune.search_alg={search_alg}")
    result = run_train([*args, "hardware.max_concurrent_trials=1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_a_search_one_trial_at_a_time(tmp_path / "run", search_alg, trials=3)


@pytest.mark.skipif(HAS_HYPEROPT, reason=f"{EXPECTED_SKIP}hyperopt is installed, so its absence cannot be tested")
def test_search_alg_without_its_package_says_what_to_install(tmp_path):
    result = run_train(tune_args(tmp_path, "run", "tune.search_alg=hyperopt"), cwd=tmp_path)
    assert result.returncode == 1 and "pip install hyperopt" in result.stderr
    assert not (tmp_path / "run" / "ray_tune").exists()


def experiment_statuses(ray_dir: Path) -> dict[str, str]:
    """Trial id → status from Ray's newest saved experiment state: what a resume starts from."""
    states = sorted(ray_dir.glob("experiment_state-*.json"))
    try:
        data = json.loads(states[-1].read_text()) if states else {"trial_data": []}
    except json.JSONDecodeError:  # caught mid-write; the next poll reads it whole
        return {}
    trials = [json.loads(trial) for trial, _ in data["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


def last_report_times(ray_dir: Path) -> dict[str, float]:
    """Trial id → when it last reported an epoch, from Ray's newest saved experiment state."""
    data = json.loads(sorted(ray_dir.glob("experiment_state-*.json"))[-1].read_text())
    return {
        json.loads(trial)["trial_id"]: json.loads(metadata)["last_result"]["timestamp"]
        for trial, metadata in data["trial_data"]
    }


def test_killed_search_resumes_without_redoing_finished_trials(tmp_path):
    # Three trials one at a time: the kill lands with one finished, one running and one not started.
    args = tune_args(tmp_path, "first", "tune.num_samples=3", "hardware.max_concurrent_trials=1", "tune.grace_period=2")
    # Ray saves its experiment state every >=10 s by default; every second here, so the kill lands between
    # a saved finished trial and a running one (TUNE_GLOBAL_CHECKPOINT_S is Ray's own setting).
    process = start_train(args, cwd=tmp_path, env={"TUNE_GLOBAL_CHECKPOINT_S": "1"})
    first = tmp_path / "first"
    finished = wait_for_one_finished_and_one_running(process, first / "ray_tune")
    killed_at = time.time()
    assert kill_process_tree(process) == -signal.SIGKILL  # it was still searching when killed
    assert finished, "no trial was recorded as finished before the search ended"
    assert not (first / "tune" / "results.csv").exists()  # the search itself did not get to finish

    result = run_train(
        tune_args(
            tmp_path,
            "second",
            "tune.num_samples=3",
            f"tune.resume={first}",
            "hardware.max_concurrent_trials=1",
            "tune.grace_period=2",
        ),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(read_rows(tmp_path / "second")) == 3
    # Not run again: the last epoch each finished trial reported, in the state the resumed search saved at
    # its end, predates the kill. (Not its result.json: Ray copies that into the run folder in the background,
    # so the kill can land before a finished trial's lines reach it, and the resumed search has no reason to
    # write them again.)
    last_reported = last_report_times(first / "ray_tune")
    for trial in finished:
        assert last_reported[trial] <= killed_at, (trial, last_reported[trial], killed_at)
    assert "Resumed the search of" in (tmp_path / "second" / "tune_report.md").read_text()


def wait_for_one_finished_and_one_running(process: subprocess.Popen, ray_dir: Path) -> set[str]:
    """Poll Ray's saved experiment state until a trial has finished and another is running or pending."""
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        statuses = experiment_statuses(ray_dir)
        finished = {t for t, status in statuses.items() if status == "TERMINATED"}
        if finished and any(status in ("RUNNING", "PENDING") for status in statuses.values()):
            return finished
        time.sleep(0.1)
    return set()


def test_ctrl_c_leaves_an_unfinished_search_that_resume_latest_continues(tmp_path):
    args = tune_args(tmp_path, "first", "tune.num_samples=3", "hardware.max_concurrent_trials=1", "tune.grace_period=2")
    process = start_train(args, cwd=tmp_path, env={"TUNE_GLOBAL_CHECKPOINT_S": "1"})
    first = tmp_path / "first"
    finished = wait_for_one_finished_and_one_running(process, first / "ray_tune")
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal does: the whole process group
    assert process.wait(timeout=300) == 130
    assert finished, "no trial was recorded as finished before the search ended"
    assert json.loads((first / "tune_state.json").read_text())["status"] == "interrupted"
    assert not (first / "best_hparams.yaml").exists() and not (first / "tune_result.json").exists()

    again = tune_args(
        tmp_path, "second", "tune.num_samples=3", "hardware.max_concurrent_trials=1", "tune.grace_period=2"
    )
    result = run_train([*again, "tune.resume=latest"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(read_rows(tmp_path / "second")) == 3
    assert f"Resumed the search of {first}" in (tmp_path / "second" / "tune_report.md").read_text()
    assert json.loads((first / "tune_state.json").read_text())["status"] == "done"


def test_sigterm_during_a_search_ends_it_as_ctrl_c_does_in_one_line(tmp_path):
    args = tune_args(tmp_path, "run", "tune.num_samples=3", "hardware.max_concurrent_trials=1", "tune.grace_period=2")
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve().parents[1] / "train.py"), *args],
            cwd=tmp_path,
            env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            finished = wait_for_one_finished_and_one_running(process, tmp_path / "run" / "ray_tune")
            os.kill(process.pid, signal.SIGTERM)  # train.py alone, as `kill` or a scheduler sends it
            code = process.wait(timeout=300)
        finally:
            if process.poll() is None:
                kill_process_tree(process)
    errors = (tmp_path / "stderr.txt").read_text()
    assert finished and code == 143, errors[-3000:]
    assert "interrupted (SIGTERM)" in errors or "tune: interrupted" in errors
    assert not any(word in errors for word in ("Traceback", "Fatal Python error", "SIGABRT", "Aborted")), errors
    assert json.loads((tmp_path / "run" / "tune_state.json").read_text())["status"] == "interrupted"


def test_resume_of_a_search_on_other_inputs_is_refused(tmp_path, finished_run):
    result = run_train(tune_args(tmp_path, "other", "tune.num_samples=5", f"tune.resume={finished_run}"), cwd=tmp_path)
    assert result.returncode == 1 and "searched other inputs" in result.stderr
    assert not (tmp_path / "other" / "ray_tune").exists()


@pytest.mark.parametrize(
    "launcher", [[], ["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2"]], ids=["basic", "ray"]
)
def test_multirun_writes_every_jobs_folder(tmp_path, launcher):
    sweep = tmp_path / "multi"
    args = [
        "-m",
        *launcher,
        UNTRACKED,
        "mode=prep",
        "merge.drop_leaks=true,false",
        f"data_dir={tmp_path}/data",
        f"hydra.sweep.dir={sweep}",
        "merge.samples_grid=0",
    ]
    result = run_train(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for job, drop in (("0", True), ("1", False)):
        assert (sweep / job / "prep_report.json").is_file()
        assert json.loads((sweep / job / "prep_report.json").read_text())["duplicates"]["leaks_dropped"] is drop
        assert f"merge.drop_leaks={drop}" in (sweep / job / ".hydra" / "overrides.yaml").read_text()
