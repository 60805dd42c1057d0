"""Roboflow source against a real local HTTP server speaking the SDK's API (the SDK reads API_URL)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from builders import jpeg_bytes, make_source
from fake_roboflow import FakeRoboflow, zip_folder
from sentinel.config.schema import RoboflowSource
from sentinel.dataset.sources import fetch_source, source_folder
from sentinel.dataset.sources.roboflow import download_roboflow
from sentinel.errors import SentinelError
from sentinel.runtime.atomic import is_complete
from sentinel.runtime.redaction import RedactingFilter

KEY = "fake-rf-key-3b9c1d2e"
WS, PROJECT, VERSION = "liteye-systems", "weapon-classification", 2


@pytest.fixture(scope="session")
def server():
    with FakeRoboflow(WS, PROJECT, VERSION, b"", KEY) as fake:
        yield fake


@pytest.fixture
def fake(server, tmp_path, monkeypatch):
    export = make_source(
        tmp_path / "export",
        ["Handgun", "Rifle"],
        {
            "train": {f"t{i}.jpg": (jpeg_bytes(i), "0 0.5 0.5 0.2 0.2\n") for i in range(3)},
            "val": {"v0.jpg": (jpeg_bytes(10), "1 0.5 0.5 0.2 0.2\n")},
        },
        layout="roboflow",
    )
    server.reset(zip_folder(export))
    monkeypatch.setenv("ROBOFLOW_API_KEY", KEY)
    # The SDK reads API_URL when it is imported; it is imported in the download's own process, which
    # inherits this environment, so no import order in this test process matters.
    monkeypatch.setenv("API_URL", server.url)
    return server


def rf_cfg(**overrides):
    base = {"workspace": WS, "project": PROJECT, "version": VERSION, "retries": 0, "timeout_s": 30}
    return OmegaConf.merge(OmegaConf.structured(RoboflowSource), {**base, **overrides})


def test_download_fixes_data_yaml_and_second_run_makes_no_request(fake, tmp_path):
    source = fetch_source("guns", rf_cfg(), tmp_path / "data")
    assert source.names == ["Handgun", "Rifle"]
    assert source.missing_splits == ["test"]
    data = yaml.safe_load(source.yaml_path.read_text())
    assert (data["train"], data["val"]) == ("train/images", "valid/images") and "test" not in data
    assert [r[1].split("?")[0] for r in fake.requests][-1] == "/files/export.zip"

    fake.requests.clear()
    again = fetch_source("guns", rf_cfg(), tmp_path / "data")
    assert again.yaml_path == source.yaml_path and fake.requests == []


def test_missing_key_names_the_variable_and_calls_nothing(fake, tmp_path, monkeypatch):
    monkeypatch.delenv("ROBOFLOW_API_KEY")
    with pytest.raises(SentinelError, match="ROBOFLOW_API_KEY"):
        fetch_source("guns", rf_cfg(), tmp_path / "data")
    assert fake.requests == []


HTTP_CASES = [
    ("rejected_key", {"key": "wrong-key-zzzz"}, {}, "was rejected (HTTP 401)"),
    ("unknown_project", {"project": "nope"}, {}, "not found (HTTP 404)"),
    ("server_error", {}, {f"/{WS}": [500, 500]}, "gave up after 2 attempts"),
    ("rate_limited_zip", {}, {"/files/export.zip": [429, 429]}, "gave up after 2 attempts: HTTP 429"),
]


@pytest.mark.parametrize(("cfg", "fail", "message"), [c[1:] for c in HTTP_CASES], ids=[c[0] for c in HTTP_CASES])
def test_http_errors_fail_clearly_without_the_key(fake, tmp_path, monkeypatch, caplog, cfg, fail, message):
    key = cfg.pop("key", KEY)
    monkeypatch.setenv("ROBOFLOW_API_KEY", key)
    fake.fail = {k: list(v) for k, v in fail.items()}
    caplog.handler.addFilter(RedactingFilter())  # as train.py does for every log handler
    with caplog.at_level(logging.DEBUG), pytest.raises(SentinelError) as raised:
        download_roboflow(rf_cfg(retries=1, **cfg), tmp_path, backoff_s=0.01)
    assert message in str(raised.value)
    assert "api_key=***" in caplog.text  # urllib3 logged the URL, masked
    assert key not in str(raised.value) and key not in caplog.text
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_transient_errors_are_retried_then_succeed(fake, tmp_path):
    fake.fail = {f"/{WS}": [429], "/files/export.zip": [503]}
    download_roboflow(rf_cfg(retries=2), tmp_path, backoff_s=0.01)
    assert (tmp_path / "train" / "images" / "t0.jpg").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [({"../evil.txt": b"x"}, "zip-slip"), ({"/tmp/evil-abs.txt": b"x"}, "zip-slip")],
    ids=["dotdot", "absolute"],
)
def test_zip_slip_is_rejected_and_nothing_written_outside(fake, tmp_path, extra, message):
    export = make_source(
        tmp_path / "export2", ["a"], {"train": {"a.jpg": (jpeg_bytes(1), "0 0.5 0.5 0.1 0.1\n")}}, layout="roboflow"
    )
    fake.zip_bytes = zip_folder(export, extra)
    with pytest.raises(SentinelError, match=message):
        fetch_source("guns", rf_cfg(), tmp_path / "data")
    assert not (tmp_path / "data" / "evil.txt").exists() and not os.path.exists("/tmp/evil-abs.txt")
    assert not is_complete(source_folder(tmp_path / "data", "guns", rf_cfg()))


def test_corrupt_zip_is_an_error_and_leaves_no_cache(fake, tmp_path):
    fake.zip_bytes = fake.zip_bytes[: len(fake.zip_bytes) // 2]
    with pytest.raises(SentinelError, match="not a valid zip"):
        fetch_source("guns", rf_cfg(), tmp_path / "data")
    assert not is_complete(source_folder(tmp_path / "data", "guns", rf_cfg()))


@pytest.mark.timeout(60)  # a hang fails here instead of holding the suite
def test_version_that_never_finishes_generating_times_out_and_stops_polling(fake, tmp_path):
    import psutil

    fake.generating = True
    before = set(psutil.Process().children(recursive=True))  # e.g. FiftyOne's mongod, started by other tests
    with pytest.raises(SentinelError, match="no complete download after 2 s"):
        fetch_source("guns", rf_cfg(timeout_s=2), tmp_path / "data")
    # The polling download was stopped, not left running.
    assert set(psutil.Process().children(recursive=True)) <= before


KILL_SCRIPT = """
import sys
from pathlib import Path
from omegaconf import OmegaConf
from sentinel.config.schema import RoboflowSource
from sentinel.dataset.sources import fetch_source
cfg = OmegaConf.merge(OmegaConf.structured(RoboflowSource), dict(workspace=sys.argv[1], project=sys.argv[2], version=2))
fetch_source("guns", cfg, Path(sys.argv[3]))
"""


@pytest.mark.slow
def test_download_killed_in_flight_is_never_taken_for_complete(fake, tmp_path):
    fake.stall_s = 120
    data_dir = tmp_path / "data"
    process = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, WS, PROJECT, str(data_dir)], start_new_session=True)
    assert fake.half_sent.wait(120), "the download never reached the zip"  # half the zip is on its way
    os.killpg(process.pid, signal.SIGKILL)  # the prep and its download child, mid-zip
    assert process.wait() == -signal.SIGKILL
    fake.release.set()
    folder = source_folder(data_dir, "guns", rf_cfg())
    assert not is_complete(folder)

    fake.stall_s = 0
    source = fetch_source("guns", rf_cfg(), data_dir)
    assert source.yaml_path.parent == folder and is_complete(folder)
    assert sorted(p.name for p in (folder / "train" / "images").iterdir()) == ["t0.jpg", "t1.jpg", "t2.jpg"]
    assert not list(folder.parent.glob(".tmp-*"))
