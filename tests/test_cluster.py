"""Sentinel on a real multi-node Ray cluster on this machine: a head and a second node, each started by the
test with `ray start` in a process group of its own and stopped by killing exactly those groups (never Ray's
own stop command, which stops every Ray on the machine)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from conftest import UNTRACKED, free_port, kill_process_tree, run_train, start_train

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")


def start_node(args: list[str], cwd: Path, wrapper: list[str] | None = None) -> int:
    """`ray start ARGS` in a new process group; returns the group's id once the node is up (ray start returns).
    The node's workers run in `cwd`."""
    process = subprocess.Popen(
        [*(wrapper or []), RAY, "start", "--disable-usage-stats", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 0, output[-3000:]
    return process.pid  # its daemons keep this process group


def stop_group(group: int) -> None:
    members = [p for p in psutil.process_iter(["pid"]) if _group_of(p.pid) == group]
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(group, signal.SIGKILL)
    _, alive = psutil.wait_procs(members, timeout=30)
    assert not alive, f"still running after SIGKILL: {alive}"


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@dataclass(frozen=True)
class Cluster:
    address: str  # the head's GCS, host:port
    second_node: int  # the process group of the second node's processes
    workers_cwd: Path  # the working folder of every node's workers


@contextlib.contextmanager
def cluster(second_node_hides: Path | None = None) -> Iterator[Cluster]:
    """A head and a second node, one CPU each; the second node may run in a mount namespace of its own in
    which an empty folder covers `second_node_hides` (a node without that data)."""
    temp = Path(tempfile.mkdtemp(prefix="sntl-ray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    port = free_port()
    common = ["--num-cpus=1", f"--temp-dir={temp}"]
    (temp / "cwd").mkdir()  # where each node's workers run; nothing of ours should land in it
    groups = [start_node(["--head", f"--port={port}", "--include-dashboard=false", *common], temp / "cwd")]
    try:
        wrapper = []
        if second_node_hides is not None:
            (temp / "empty").mkdir()
            hide = f'mount --bind {temp / "empty"} {second_node_hides} && exec "$0" "$@"'
            wrapper = ["unshare", "-m", "--propagation", "private", "sh", "-c", hide]
        groups.append(start_node([f"--address=127.0.0.1:{port}", *common], temp / "cwd", wrapper))
        yield Cluster(f"127.0.0.1:{port}", groups[-1], temp / "cwd")
    finally:
        for group in reversed(groups):
            stop_group(group)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def two_node_cluster_of():
    with cluster() as running:
        yield running


@pytest.fixture(scope="module")
def two_node_cluster(two_node_cluster_of):
    return two_node_cluster_of.address


def trial_nodes(run_dir: Path) -> dict[str, int]:
    """How many trials ran on each node, from Ray's per-trial results."""
    nodes: dict[str, int] = {}
    for result in (run_dir / "ray_tune").glob("*/result.json"):
        first = json.loads(result.read_text().splitlines()[0])
        nodes[first["node_id"]] = nodes.get(first["node_id"], 0) + 1
    return nodes


def test_the_head_is_recognised_as_ray_although_it_greets_first(two_node_cluster):
    from sentinel.runtime.raycluster import check_ray_address

    check_ray_address(two_node_cluster)  # Ray's GCS sends its HTTP/2 SETTINGS frame before we speak


def test_a_grpc_server_that_greets_with_http2_settings_is_ray_and_one_with_text_is_not():
    from sentinel.errors import SentinelError
    from sentinel.runtime.raycluster import HTTP2_EMPTY_SETTINGS, check_ray_address

    for greeting, is_ray in ((HTTP2_EMPTY_SETTINGS, True), (b"SSH-2.0-OpenSSH_9.2\r\n", False)):
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            greeter = threading.Thread(target=lambda s=server, g=greeting: s.accept()[0].sendall(g), daemon=True)
            greeter.start()
            address = f"127.0.0.1:{server.getsockname()[1]}"
            if is_ray:
                check_ray_address(address)
            else:
                with pytest.raises(SentinelError, match="not Ray"):
                    check_ray_address(address)
            greeter.join(timeout=10)


def tune_args(address: str, tmp_path: Path) -> list[str]:
    return [
        "experiment=demo",
        UNTRACKED,
        "mode=tune",
        f"hardware.ray_address={address}",
        "hardware.cpu_per_trial=1",
        "hardware.max_concurrent_trials=2",
        *("tune.num_samples=4", "tune.epochs=2", "tune.grace_period=1", "merge.samples_grid=0"),
        f"data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]


def test_a_node_without_the_dataset_stops_the_search_before_any_trial_naming_it(tmp_path):
    prep = run_train(
        ["experiment=demo", UNTRACKED, "mode=prep", f"data_dir={tmp_path / 'data'}", "hydra.run.dir=prep"], tmp_path
    )
    assert prep.returncode == 0, prep.stderr[-3000:]
    with cluster(second_node_hides=tmp_path / "data") as running:
        doctor = run_train(
            [
                "experiment=demo",
                UNTRACKED,
                "mode=doctor",
                f"hardware.ray_address={running.address}",
                f"data_dir={tmp_path / 'data'}",
            ],
            cwd=tmp_path,
        )
        result = run_train(tune_args(running.address, tmp_path), cwd=tmp_path)
    rows = [line for line in doctor.stdout.splitlines() if line.startswith("| Ray node")]
    assert len(rows) == 2 and all("1 CPUs, 0 GPUs" in row for row in rows), doctor.stdout
    assert sum("| PROBLEM |" in row and "lacks merged dataset" in row for row in rows) == 1, rows  # the second
    assert doctor.returncode == 1 and "dataset_sync=true" in doctor.stderr
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "1 of 2 Ray nodes cannot run a trial" in error and "merged dataset" in error and str(tmp_path) in error
    assert "Fix:" in error and not list((tmp_path / "run").glob("ray_tune/train_trial_*"))


def test_with_dataset_sync_a_node_without_the_dataset_gets_a_copy_and_runs_trials(tmp_path):
    prep = run_train(
        ["experiment=demo", UNTRACKED, "mode=prep", f"data_dir={tmp_path / 'data'}", "hydra.run.dir=prep"], tmp_path
    )
    assert prep.returncode == 0, prep.stderr[-3000:]
    with cluster(second_node_hides=tmp_path / "data") as running:
        result = run_train([*tune_args(running.address, tmp_path), "hardware.dataset_sync=true"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # A search through the cluster address, with Ray's storage in the run folder (the default), ran its
    # trials on both nodes: the node that lacked the dataset ran trials too.
    nodes = trial_nodes(tmp_path / "run")
    assert sum(nodes.values()) == 4 and len(nodes) == 2, nodes
    log = (tmp_path / "run" / "train.log").read_text()
    assert "dataset_sync: 1 node(s) got the dataset" in log
    # On this machine the copy went into the empty folder covering data_dir on the second node, and left
    # the real data_dir (the first node's) as it was: its merged dataset is still the one prep built.
    assert not list((tmp_path / "data").glob("merged/.tmp-*"))


def second_node_id(address: str) -> str:
    """The Ray node id of the node that is not the head, asked of the cluster by a short-lived driver."""
    code = (
        f"import json, ray; ray.init(address={address!r}, logging_level='ERROR'); "
        "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive'] "
        "and 'node:__internal_head__' not in n['Resources']]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    (node,) = json.loads(result.stdout.strip().splitlines()[-1])
    return node


def wait_for_a_trial_running_on(node: str, ray_dir: Path, process: subprocess.Popen, below: int) -> str:
    """Poll Ray's per-trial results until a trial on `node` shows an epoch, and fewer than `below`. What the
    run folder shows lags the trial (Ray copies results in every second here), so the caller keeps ASHA's
    grace period and the epochs well above `below`: the trial can be neither stopped nor finished yet."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        for result in ray_dir.glob("*/result.json"):
            lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
            if lines and lines[0].get("node_id") == node and len(lines) < below:
                return result.parent.name
        time.sleep(0.1)
    return ""


def test_a_trial_on_a_lost_node_is_retried_and_the_search_accounts_for_every_trial(tmp_path):
    epochs, grace, seen_below = 16, 12, 3  # a trial seen with < 3 epochs is still far from its first rung
    with cluster() as running:
        node = second_node_id(running.address)
        # Two trials, one per node: the one on the lost node, and one that makes the retry wait for a free CPU.
        args = [*tune_args(running.address, tmp_path), "tune.num_samples=2", f"tune.epochs={epochs}"]
        args.append(f"tune.grace_period={grace}")
        # Ray writes trial results in its staging folder and copies them into the run folder when it saves
        # the experiment's state: every second here, so the test sees each epoch while the trial runs.
        process = start_train([*args, "hardware.max_failures=2"], cwd=tmp_path, env={"TUNE_GLOBAL_CHECKPOINT_S": "1"})
        try:
            trial = wait_for_a_trial_running_on(node, tmp_path / "run" / "ray_tune", process, below=seen_below)
            assert trial, "no trial reported an epoch on the second node"
            stop_group(running.second_node)  # the node is lost in the middle of that trial
            assert process.wait(timeout=600) == 0
        finally:
            if process.poll() is None:
                kill_process_tree(process)
    rows = list(csv.DictReader((tmp_path / "run" / "tune" / "results.csv").open()))
    assert len(rows) == 2 and all(row["ended"] in ("completed", "stopped early") for row in rows), rows
    lost = next(row for row in rows if row["trial"] == trial)
    reports = [json.loads(line) for line in (tmp_path / "run" / "ray_tune" / trial / "result.json").open()]
    assert reports[0]["node_id"] == node and reports[-1]["node_id"] != node  # retried on the other node
    assert int(lost["epochs"]) == reports[-1]["training_iteration"] <= epochs


def test_a_ray_launcher_sweep_on_the_cluster_writes_job_folders_where_it_was_launched(two_node_cluster_of, tmp_path):
    """The README's sweep on a cluster: hydra/launcher=ray_cluster, two fine-tune jobs as Ray tasks."""
    result = run_train(
        [
            "-m",
            "hydra/launcher=ray_cluster",
            f"hydra.launcher.ray.init.address={two_node_cluster_of.address}",
            *(
                "experiment=demo",
                UNTRACKED,
                "mode=finetune",
                "model.epochs=1",
                "augmentation.close_mosaic=0",
                "seed=0,1",
                "merge.samples_grid=0",
            ),
            f"data_dir={tmp_path / 'data'}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    weights = sorted(tmp_path.glob("multirun/*/*/*/sentinel.pt"))  # the default sweep folder, not hydra.sweep.dir
    assert [w.parent.name for w in weights] == ["0", "1"], weights
    assert len({w.parent.parent for w in weights}) == 1  # one sweep folder for both jobs
    assert not list(two_node_cluster_of.workers_cwd.iterdir())  # nothing where the workers run


def test_the_cluster_example_is_a_valid_ray_up_config_that_sets_up_sentinel_as_the_readme_does():
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    example = Path(__file__).resolve().parents[1] / "examples" / "cluster" / "cluster.yaml"
    config = yaml.safe_load(example.read_text())
    validate_config(prepare_config(config))  # Ray's own schema, as `ray up` checks it
    assert any("make setup" in command for command in config["setup_commands"])
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all(".venv/bin/ray" in command for command in starts)  # the Ray that Sentinel's set-up installed


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file_uri"])
def test_trials_kept_in_hardware_storage_path_reach_the_run_folder(two_node_cluster, tmp_path, as_uri):
    shared = tmp_path / "shared"
    storage = shared.as_uri() if as_uri else str(shared)
    result = run_train([*tune_args(two_node_cluster, tmp_path), f"hardware.storage_path={storage}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (experiment,) = shared.iterdir()  # Ray kept the search there, in a folder named after the run
    assert len(list(experiment.glob("train_trial_*/result.json"))) == 4
    nodes = trial_nodes(tmp_path / "run")  # and the run folder has its copy, which the reports read
    assert sum(nodes.values()) == 4 and len(nodes) == 2, nodes  # one CPU per node, two trials at once
    with open(tmp_path / "run" / "tune" / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 4
    assert (tmp_path / "run" / "tune" / "best_trial" / "best.pt").is_file()
