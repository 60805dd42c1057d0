"""Shared fixtures: compose Sentinel's real config with Hydra's compose API, outputs under tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from sentinel.schema import register_configs

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"

# Offline and quiet: no network probes or telemetry from the libraries under test.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")


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
