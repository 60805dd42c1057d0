"""Ray as Sentinel uses it: start a local Ray or join a cluster, and check before the first trial that the
address is Ray, that a trial fits on some node and (on a cluster) that every node sees the dataset and the
run folder, so that nothing waits forever and no trial fails for a reason known in advance.

Joining an address that is not Ray (a dashboard URL, an HTTP service, a closed port) makes `ray.init` wait
for a long time with no message; a trial that asks for more than any node has stays PENDING forever.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentinel.config.schema import HardwareConfig
from sentinel.errors import ConfigError, SentinelError
from sentinel.runtime.signals import take_back_sigterm

log = logging.getLogger(__name__)


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast and clearly on an address Ray would wait on for a long time, or misread."""
    if address in ("", "auto", "local"):
        return
    if address.startswith(("http://", "https://")):
        raise ConfigError(
            "hardware.ray_address",
            f"{address!r} looks like the dashboard URL",
            "use ray://<head>:10001 (Ray Client) or <head>:6379, or auto on a cluster node",
        )
    host_port = address.removeprefix("ray://")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("hardware.ray_address", f"{address!r} is not host:port", "e.g. ray://head:10001")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as connection:
            other = identify_non_grpc_service(connection, timeout_s)
    except OSError as error:
        raise SentinelError(
            f"Ray cluster at {address} is not reachable ({error}). Fix: start it (`ray start --head`), check "
            'host and port, or set hardware.ray_address="" to run Ray locally'
        ) from None
    if other:
        raise SentinelError(
            f"{address} answers, but it is not Ray ({other}); joining it would wait forever. Fix: use the head's "
            "GCS port (6379 by default) or ray://<head>:10001 for Ray Client"
        )


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HTTP2_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def is_http2_settings(data: bytes) -> bool:
    """An HTTP/2 frame header (9 bytes) of type SETTINGS (4): what a gRPC server sends first."""
    return len(data) >= 9 and data[3] == 0x04


def identify_non_grpc_service(connection: socket.socket, timeout_s: float) -> str:
    """'' when the server speaks gRPC (HTTP/2), as Ray's GCS and Ray Client do; else what it seems to be.

    A server that greets first with anything but an HTTP/2 SETTINGS frame (SSH, SMTP, MySQL) is not Ray; Ray's
    GCS does greet, with its SETTINGS frame. A silent server gets the HTTP/2 preface and an empty SETTINGS
    frame: a gRPC server answers with a SETTINGS frame (type 4); an HTTP/1 server with text.
    """
    connection.settimeout(min(timeout_s, 1.0))
    try:
        greeting = connection.recv(64)
        if is_http2_settings(greeting):
            return ""  # an HTTP/2 server preface: Ray's GCS (gRPC) sends its SETTINGS frame at once
        return f"it greets with {greeting[:40]!r}" if greeting else "it closed the connection at once"
    except TimeoutError:
        pass  # silent until spoken to, like Ray Client's gRPC server
    connection.settimeout(timeout_s)
    try:
        connection.sendall(HTTP2_PREFACE + HTTP2_EMPTY_SETTINGS)
        reply = connection.recv(64)
    except TimeoutError:
        return f"no answer to an HTTP/2 greeting within {timeout_s:.0f} s"
    except OSError as error:
        return f"it dropped the connection ({error.strerror or error})"
    if is_http2_settings(reply):
        return ""
    return f"it answered {reply[:40]!r}" if reply else "it closed the connection without an HTTP/2 answer"


def check_trial_resources(hw: HardwareConfig) -> None:
    """Before the first trial: a trial must fit on one alive node, or Ray keeps it PENDING forever."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    most_cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    most_gpus = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    if hw.gpu_per_trial > most_gpus:
        raise ConfigError(
            "hardware.gpu_per_trial",
            f"each trial asks for {hw.gpu_per_trial} GPU but no Ray node has more than {most_gpus:g}",
            "use hardware=cpu (or hardware.gpu_per_trial=0) where there is no GPU, or join a cluster with GPUs",
        )
    if hw.cpu_per_trial > most_cpus:
        raise ConfigError(
            "hardware.cpu_per_trial",
            f"each trial asks for {hw.cpu_per_trial:g} CPUs but no Ray node has more than {most_cpus:g}",
            f"set hardware.cpu_per_trial to {max(1, int(most_cpus))} or less",
        )


def check_nodes_see(dataset_yaml: Path, run_dir: Path, timeout_s: float = 120.0) -> None:
    """Before the first trial on a cluster: one small task per alive node checks that the node sees the
    merged dataset (complete, in its fingerprint's folder) and can write the run folder, where Ray Tune keeps
    the trials' results. A node that cannot would fail every trial placed on it; this names it once."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0, max_retries=0)(node_problem)
    what = "the check that every Ray node sees the dataset"
    answers = _on_each_node(nodes, probe, timeout_s, what, str(dataset_yaml), str(run_dir))
    answered = zip(nodes, answers, strict=True)
    problems = [f"node {n['NodeManagerAddress']} ({n['NodeID'][:12]}): {a}" for n, a in answered if a]
    if problems:
        raise SentinelError(
            f"{len(problems)} of {len(nodes)} Ray nodes cannot run a trial: {'; '.join(problems)}. Fix: put data_dir "
            "and the run folder on storage every node mounts at the same path (or set hardware.dataset_sync=true "
            "to copy the dataset to each node), or leave those nodes out"
        )
    log.info("tune: all %d Ray nodes see the dataset and can write the run folder", len(nodes))


MAX_SYNC_BYTES = 2 * 1024**3  # dataset_sync goes through Ray's object store; larger belongs on shared storage


def sync_dataset_to_nodes(folder: Path, timeout_s: float = 600.0) -> None:
    """hardware.dataset_sync: every alive node without the merged dataset gets a copy at the same path.

    For clusters without a shared disk. The dataset is packed once (a tar of the folder, links followed:
    on the node that built it, images are links to the sources) and sent through Ray's object store; each
    node that lacks a complete copy unpacks it into a temporary sibling and renames it into place, so the
    copy is keyed by the dataset's fingerprint (its folder name) and a killed sync leaves no half dataset.
    """
    import ray

    from sentinel.runtime.atomic import COMPLETE_MARKER

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    has = ray.remote(num_cpus=0, max_retries=0)(_has_complete_dataset)
    answers = _on_each_node(nodes, has, timeout_s, "checking which Ray nodes have the dataset", str(folder))
    lacking = [n for n, present in zip(nodes, answers, strict=True) if not present]
    if not lacking:
        log.info("tune: dataset_sync: all %d Ray nodes already have %s", len(nodes), folder.name)
        return
    started = time.monotonic()
    packed = _pack_folder(folder, skip=COMPLETE_MARKER)
    marker = json.loads((folder / COMPLETE_MARKER).read_text())
    log.info("tune: dataset_sync: sending %s (%.1f MB) to %d Ray node(s)", folder.name, len(packed) / 1e6, len(lacking))
    unpack = ray.remote(num_cpus=0, max_retries=0)(_unpack_dataset)
    _on_each_node(
        lacking, unpack, timeout_s, "copying the dataset to the Ray nodes", str(folder), ray.put(packed), marker
    )
    log.info("tune: dataset_sync: %d node(s) got the dataset in %.1f s", len(lacking), time.monotonic() - started)


def _on_each_node(nodes: list[dict[str, Any]], task: Any, timeout_s: float, what: str, *args: Any) -> list[Any]:
    """Run a Ray task once on each of `nodes` (pinned there) and return their answers in order."""
    import ray
    from ray.exceptions import GetTimeoutError, RayError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    refs = [
        task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(*args)
        for n in nodes
    ]
    try:
        return ray.get(refs, timeout=timeout_s)
    except GetTimeoutError:
        raise SentinelError(
            f"{what} did not finish within {timeout_s:g} s on {len(nodes)} node(s). Fix: check that every node "
            "is healthy (ray status) and has Sentinel installed"
        ) from None
    except RayError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise SentinelError(f"{what} failed on a Ray node: {first_line}") from None


def _pack_folder(folder: Path, skip: str) -> bytes:
    """The folder as an uncompressed tar (images are already compressed), links followed."""
    buffer = io.BytesIO()
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    if size > MAX_SYNC_BYTES:
        raise ConfigError(
            "hardware.dataset_sync",
            f"the merged dataset {folder} is {size / 1024**3:.1f} GiB; dataset_sync sends at most "
            f"{MAX_SYNC_BYTES / 1024**3:.0f} GiB through Ray's object store",
            "put data_dir on storage every node mounts at the same path, and set hardware.dataset_sync=false",
        )
    with tarfile.open(fileobj=buffer, mode="w", dereference=True) as tar:
        for path in sorted(folder.iterdir()):
            if path.name != skip:
                tar.add(path, arcname=path.name)
    return buffer.getvalue()


def _has_complete_dataset(folder: str) -> bool:
    from sentinel.runtime.atomic import is_complete

    return is_complete(Path(folder))


def _unpack_dataset(folder: str, packed: bytes, marker: dict[str, Any]) -> None:
    """On a node: unpack the dataset into place unless another sync (or run) put it there meanwhile."""
    from sentinel.runtime.atomic import atomic_build, is_complete, target_lock

    final = Path(folder)
    with target_lock(final):
        if is_complete(final):
            return
        with atomic_build(final, marker) as tmp, tarfile.open(fileobj=io.BytesIO(packed)) as tar:
            tar.extractall(tmp, filter="data")


@dataclass(frozen=True)
class NodeReport:
    """One alive Ray node as mode=doctor lists it."""

    name: str  # address and the start of its id
    resources: str  # "4 CPUs, 1 GPU"
    missing: list[str]  # merged datasets (fingerprints) this machine has complete and the node does not
    run_dir_problem: str  # why the node cannot write the run folder, or ""


def node_reports(data_dir: Path, run_dir: Path, timeout_s: float = 60.0) -> list[NodeReport]:
    """Each alive node's resources, which of this machine's merged datasets it lacks, and whether it can
    write the run folder: what a search would need of it (call with Ray connected)."""
    import ray

    from sentinel.runtime.atomic import is_complete

    merged = sorted(p.name for p in (data_dir / "merged").glob("*") if is_complete(p))
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0, max_retries=0)(_node_facts)
    answers = _on_each_node(nodes, probe, timeout_s, "listing the Ray nodes", str(data_dir), merged, str(run_dir))
    return [
        NodeReport(
            f"{n['NodeManagerAddress']} ({n['NodeID'][:12]})",
            f"{n['Resources'].get('CPU', 0):g} CPUs, {n['Resources'].get('GPU', 0):g} GPUs",
            missing,
            run_dir_problem,
        )
        for n, (missing, run_dir_problem) in zip(nodes, answers, strict=True)
    ]


def _node_facts(data_dir: str, merged: list[str], run_dir: str) -> tuple[list[str], str]:
    from sentinel.runtime.atomic import is_complete

    missing = [name for name in merged if not is_complete(Path(data_dir) / "merged" / name)]
    return missing, _cannot_write(run_dir)


def _cannot_write(folder: str) -> str:
    """'' when a file can be created in `folder` here, else why not."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".node-check-"):
            pass
    except OSError as error:
        return f"cannot write in {folder} ({error.strerror or error})"
    return ""


def node_problem(dataset_yaml: str, run_dir: str) -> str:
    """'' when this node sees a complete merged dataset and can write in the run folder; else what is wrong."""
    from sentinel.runtime.atomic import is_complete

    folder = Path(dataset_yaml).parent
    if not Path(dataset_yaml).is_file() or not is_complete(folder):
        return f"the merged dataset {folder} is not there"
    return _cannot_write(run_dir)


def connect_ray(hw: HardwareConfig) -> bool:
    """Start or join Ray; returns True when we started it (and so must shut it down).

    The caller has checked the address with check_ray_address first (ray.init waits forever on an address
    that is not Ray): both callers do it before work that takes longer than the check, so it is not repeated
    here, where a Ray Client address (silent until spoken to) costs about a second each time."""
    import ray

    address = hw.ray_address.strip()
    if ray.is_initialized():
        return False
    # Workers' output stays out of the console: Ray forwards every trial's stdout/stderr to the driver,
    # and a trial that ASHA stops gets SIGTERM, which Ray turns into SystemExit wherever the worker is (a
    # traceback on the terminal). Each trial writes its Ultralytics log into its own folder instead
    # (tune.train_trial); Ray keeps the raw worker output in its session logs.
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        kwargs["address"] = address
    else:
        kwargs.update(num_cpus=hw.num_cpus, num_gpus=hw.num_gpus)
    try:
        with idle_api_server_skipped(), token_notice_to_the_log():
            ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise SentinelError(f"could not start or join Ray ({address or 'local'}): {error}") from None
    take_back_sigterm()  # ray.init's handlers would end the driver with a stack dump and SIGABRT
    return True


# Ray (2.5x) logs, at every start of a local Ray with RAY_AUTH_MODE unset, that it enabled token authentication
# (its safe default, which Sentinel keeps): a warning on the console of every default search, though nothing is
# wrong. It goes to the run's log instead.
TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


@contextmanager
def token_notice_to_the_log() -> Iterator[None]:
    """Within: Ray's token-authentication notice goes to the run's log file, not to the console."""
    notice = logging.getLogger(TOKEN_NOTICE_LOGGER)
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    saved = (notice.propagate, notice.handlers[:])
    notice.handlers, notice.propagate = handlers, False
    try:
        yield
    finally:
        notice.propagate, notice.handlers = saved[0], saved[1]


@contextmanager
def idle_api_server_skipped() -> Iterator[None]:
    """Within: a Ray started here with include_dashboard=False and usage stats off starts no API server.

    With the dashboard off, Ray still starts its API server, only to report usage stats
    (ray-project/ray#26042), and waits for it to publish its address before it starts the raylet: 1.1-1.8 s
    of every local start on a 2-core machine, on the critical path (ray 2.60, ray/_private/node.py
    start_head_processes). With usage stats off that server has nothing to do: its one module returns at
    once for a cluster `ray.init` started. Ray Tune needs only the GCS and the raylets. So, in exactly that
    case, the node records what Ray records for a dashboard it did not include (an empty address) and starts
    nothing; in every other case, and on a Ray without that method, Ray starts as it always does.
    """
    try:
        from ray._common.usage.usage_lib import usage_stats_enabled
        from ray._private.node import Node
    except ImportError:  # a Ray that moved them: started as it always is (tests/test_tune.py notices)
        yield
        return
    start_api_server = getattr(Node, "start_api_server", None)
    if start_api_server is None or usage_stats_enabled():
        yield
        return

    def start_unless_idle(node: Any, *, include_dashboard: bool | None, raise_on_failure: bool) -> None:
        if include_dashboard is not False:
            start_api_server(node, include_dashboard=include_dashboard, raise_on_failure=raise_on_failure)
            return
        node._webui_url = ""  # what Ray's own start_api_server returns when the dashboard is not included

    Node.start_api_server = start_unless_idle
    try:
        yield
    finally:
        Node.start_api_server = start_api_server


@contextmanager
def ray_shutting_down(started: bool) -> Iterator[None]:
    """Within: the Ray this run started shuts down in a background thread, while the driver goes on.

    Most of `ray.shutdown()` is waiting: Ray stops its GCS before its autoscaler monitor, whose SIGTERM
    handler then tries to report to that GCS until Ray kills it a second later (ray 2.60,
    ray/_private/node.py kill_all_processes, ray/autoscaler/_private/monitor.py _signal_handler). Use it for
    work that needs no Ray (the report of a finished search); on leaving, the shutdown has finished.
    """
    if not started:
        yield
        return
    import ray

    def shut_down() -> None:
        try:
            ray.shutdown()
        except Exception as error:  # the search is done either way; its report matters more than a warning
            log.warning("Ray did not shut down cleanly: %s", error)

    stopping = threading.Thread(target=shut_down, name="ray-shutdown", daemon=True)
    stopping.start()
    try:
        yield
    finally:
        stopping.join()
