"""Shared fixtures: compose Sentinel's real config with Hydra's compose API, outputs under tmp_path."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from sentinel.config.schema import register_configs

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"

# The environment is set here, when pytest loads this file and before any test module imports a library:
# some read it once at import (FiftyOne's database folder, Roboflow's API_URL), and a module that imported
# them first would otherwise see the user's settings. Offline and quiet: no network probes or telemetry.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")


def _session_folder(kind: str) -> Path:
    """A folder of this test session's own under the system temp folder, never the user's.

    Each session first removes the folders of earlier sessions whose process is gone (a session killed
    before its end leaves them). FiftyOne's cannot be removed by its own session: FiftyOne stops its mongod
    only at interpreter exit, after every hook and atexit handler, and a mongod whose files vanish aborts
    and hangs the exit.
    """
    for stale in Path(tempfile.gettempdir()).glob(f"sentinel-tests-{kind}-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.gettempdir()) / f"sentinel-tests-{kind}-{os.getpid()}"


os.environ["FIFTYONE_DATABASE_DIR"] = str(_session_folder("fiftyone"))
# Every local Ray that a test's train.py starts keeps a session folder, with Ray Tune's staging copy of each
# trial's folder (weights included: ~0.2 GB per search here), in Ray's temp folder; the suite starts about 20.
# A folder of the session's own is removed when the session ends, so the suite does not fill the disk.
RAY_TEMP = _session_folder("ray")
os.environ["RAY_TMPDIR"] = str(RAY_TEMP)
# Ray refuses to create objects when the disk holding its temp folder is over 95% full (by default), however
# little it needs. The disk here is shared with other machines' work, whose use comes and goes; the suite
# itself needs a few GB at most, so it may fill the disk closer before Ray refuses.
os.environ.setdefault("RAY_local_fs_capacity_threshold", "0.99")
os.environ.pop("API_URL", None)  # Roboflow tests point it at their local server, per test

# A skip is a test that did not run. Only these reasons are expected on some machines; any other skip fails
# the session (pytest would otherwise pass it quietly).
EXPECTED_SKIP = "expected here: "


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests run only where CUDA is; elsewhere they are skipped with that reason."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=f"{EXPECTED_SKIP}no CUDA device on this machine"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(RAY_TEMP, ignore_errors=True)  # every train.py the tests started has ended by now
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    unexpected = [r for r in skipped if EXPECTED_SKIP not in str(getattr(r, "longrepr", ""))]
    if unexpected:
        for report in unexpected:
            reporter.write_line(f"UNEXPECTED SKIP: {report.nodeid}: {report.longrepr}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """compose_cfg("mode=prep", ...) → the composed config, with data_dir inside tmp_path."""
    register_configs()
    GlobalHydra.instance().clear()

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=[f"data_dir={tmp_path / 'data'}", *overrides])

    yield _compose
    GlobalHydra.instance().clear()


def run_train(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600):
    """Run `python train.py ARGS` as a user would, from `cwd`."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


# Tracking off, for runs whose test checks something else: starting MLflow costs each tracked train.py ~2.5 s
# of CPU and of waiting at its end (108 tracked runs: 4.6 min of the suite). What tracking records, and that
# tracking never changes a run's outcome, is checked with it on (test_tracking.py,
# reliability/test_runs_and_tracking.py, test_secrets.py, test_readme.py).
UNTRACKED = "tracking=none"

# The default local MLflow store (tracking=mlflow, with the lock taken while it is set up, and the journals of
# runs recorded after their train.py ended) lives beside the run folders, under the launch folder.
TRACKING_STORE = ("outputs/mlflow.db", "outputs/.mlflow.db.lock", "outputs/mlartifacts/", "outputs/pending/")


def outside_run_and_data(relative_path: str) -> bool:
    """A path (relative to tmp_path) that mine_args' runs must leave alone: not the run folder (or a second one,
    run2), data_dir or the tracking store."""
    top = relative_path.split("/")[0]
    return top not in ("run", "run2", "data") and not relative_path.startswith(TRACKING_STORE)


def mine_args(tmp_path: Path) -> list[str]:
    """Overrides that select a user's dataset `mine`, defined in tmp_path/conf/datasets/mine.yaml, and keep
    the run folder (tmp_path/run) and data_dir (tmp_path/data) inside tmp_path; untracked."""
    return [
        UNTRACKED,
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        "datasets=[mine]",
        f"data_dir={tmp_path}/data",
        f"hydra.run.dir={tmp_path}/run",
        "merge.samples_grid=0",
    ]


def start_train(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `python train.py ARGS` in its own process group, so a test can SIGKILL it and all it started."""
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def free_port() -> int:
    """A localhost port nothing listens on now (for a server the test starts, or one that must not answer)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_process_tree(process: subprocess.Popen) -> int:
    """SIGKILL a process started by start_train and every process it started (Ray's raylet, GCS and workers
    included), by process id: never Ray's own stop command, which stops every Ray on the machine. Returns the
    process's exit status (-SIGKILL when the kill is what ended it)."""
    import psutil

    try:
        family = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    os.killpg(process.pid, signal.SIGKILL)
    for child in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    status = process.wait()
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, f"still running after SIGKILL: {alive}"
    return status


def built_once_per_session(
    tmp_path_factory: pytest.TempPathFactory, worker_id: str, name: str, step: str, build: Callable[[Path], None]
) -> Path:
    """The folder `name`, shared by every xdist worker of this test session, after `build` ran in it once: the
    first worker to ask runs it under the step's file lock, the others wait for it and reuse what it made.
    Later steps add to what the earlier ones made, so a test waits only for the steps it needs."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent  # xdist: the folder above every worker's own
    folder = shared / name
    with FileLock(str(shared / f"{name}.{step}.lock")):
        if not (folder / f"{step}.done").is_file():
            folder.mkdir(exist_ok=True)
            build(folder)
            (folder / f"{step}.done").write_text(step)
    return folder


TINY = ["experiment=tiny", UNTRACKED]  # conf/experiment/tiny.yaml: the demo at 2 epochs, 2 trials
# The demo preset's fine-tune (conf/experiment/demo.yaml: 40 epochs, Ultralytics' close_mosaic of 10) on top of
# the tiny preset, which keeps the demo's data, model and image size: about a minute on 2 CPUs.
DEMO_FINETUNE = ["model.epochs=40", "model.patience=40", "augmentation.close_mosaic=10"]


def train_tiny(folder: Path, *args: str, run: str | None = None) -> subprocess.CompletedProcess:
    """A tiny train.py run that must succeed, in `folder` with data_dir `folder`/data and run folder `folder`/`run`
    (a new dated one under `folder`/outputs when None)."""
    run_dir = [f"hydra.run.dir={folder / run}"] if run else []
    result = run_train([*TINY, f"data_dir={folder / 'data'}", *run_dir, *args], cwd=folder)
    assert result.returncode == 0, f"{run or 'run'}: {result.stderr[-3000:]}"
    return result


def fine_tune_as_demo(folder: Path) -> None:
    train_tiny(folder, "mode=finetune", *DEMO_FINETUNE, run="ft_longer")


def search_then_fine_tune(folder: Path) -> None:
    train_tiny(folder, "mode=tune", run="tune")
    train_tiny(folder, "mode=finetune", "finetune.hparams_from=latest", run="ft")


@pytest.fixture(scope="session")
def demo_weights(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """Weights that detect the demo shapes, trained once per test session in the tiny project (run folder
    `ft_longer`: a fine-tune as long as `make demo`'s, with Ultralytics' default values): tests that only need a
    model that finds something use these. The demo data they were trained on is under the returned file's
    ../../data."""
    project = built_once_per_session(tmp_path_factory, worker_id, "tiny-project", "demo-weights", fine_tune_as_demo)
    return project / "ft_longer" / "sentinel.pt"


@pytest.fixture(scope="session")
def tiny_project(demo_weights: Path, tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The tiny project as a user builds it, once per test session: after demo_weights' `ft_longer`, a 2-trial
    search (`tune`) and a 2-epoch fine-tune with its values (`ft`, finetune.hparams_from=latest, so the newest
    fine-tune). data_dir is its `data`. test_finetune checks these runs and adds its own beside them."""
    return built_once_per_session(tmp_path_factory, worker_id, "tiny-project", "searched", search_then_fine_tune)
