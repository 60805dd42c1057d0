"""Roboflow source: download a dataset version with the Roboflow SDK, safely.

The SDK does the API conversation (key check, workspace, project, version, export link). Around it we fix
what it gets wrong for unattended runs, each scoped to the download and restored afterwards:
- its `requests` calls pass no timeout, so a stalled connection hangs forever: every call made through
  `roboflow.util.http` gets `timeout=(connect, read)`;
- it polls a version that is still generating every 5 s with no limit: the whole download runs in a child
  process (`python -m sentinel.dataset.sources.roboflow`) that is killed after `timeout_s`. A thread could not be
  stopped: it went on polling, with the SDK patched, into whatever ran next. The child inherits the key
  through the environment (never argv, which `ps` shows) and reports its outcome in a small JSON file;
  its log lines come back on stderr and are logged here, redacted;
- it saves the zip response without checking its HTTP status, then extracts it: we replace that step with
  one that checks the status, rejects corrupt archives and members with absolute or `../` paths
  (zip-slip) before writing anything;
- it keeps data.yaml's `../train/images` paths, which point one level too high (roboflow-python#240): we
  rewrite them to the splits the export really contains and report the ones it lacks.
Transient failures (HTTP 429/5xx, connection errors, timeouts) are retried with exponential backoff;
401/403/404 fail at once with what to fix. The key is read from ROBOFLOW_API_KEY only, and since the SDK
puts it in every URL, every message we raise is redacted and raised `from None` (no chained traceback).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from sentinel.config.plain import plain
from sentinel.config.schema import RoboflowSource
from sentinel.errors import SentinelError
from sentinel.runtime.redaction import ROBOFLOW_KEY_ENV, redact

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = (10.0, 120.0)  # (connect, read) seconds for each HTTP request the SDK makes
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
CHILD_LOG_LEVEL_ENV = "SENTINEL_ROBOFLOW_LOG_LEVEL"
SPLIT_FOLDERS = {"train": "train", "val": "valid", "test": "test"}


class _Transient(Exception):
    """A failure worth retrying."""


def api_key() -> str:
    key = os.environ.get(ROBOFLOW_KEY_ENV, "").strip()
    if not key:
        raise SentinelError(
            f"Roboflow datasets need an API key in the environment variable {ROBOFLOW_KEY_ENV}. "
            f"Fix: export {ROBOFLOW_KEY_ENV}=<your key> (app.roboflow.com → Settings → API Keys)"
        )
    return key


def download_roboflow(cfg: RoboflowSource, out: Path, backoff_s: float = 1.0) -> None:
    """Download workspace/project/version in `cfg.format` into the empty folder `out`, then fix data.yaml."""
    api_key()  # fail before starting anything when the key is missing
    what = f"{cfg.workspace}/{cfg.project}/{cfg.version} ({cfg.format})"
    for attempt in range(cfg.retries + 1):
        try:
            _download_in_child(cfg, out, what)
            break
        except _Transient as error:
            if attempt == cfg.retries:
                raise SentinelError(f"Roboflow {what}: gave up after {attempt + 1} attempts: {error}") from None
            wait = min(backoff_s * 2**attempt, 60.0)
            log.warning("Roboflow %s: %s; retrying in %.0f s (%d/%d)", what, error, wait, attempt + 1, cfg.retries)
            _empty_folder(out)
            time.sleep(wait)
    missing = fix_data_yaml(out)
    if missing:
        log.warning("Roboflow %s has no %s split; it is reported, not invented", what, ", ".join(missing))


def _download_in_child(cfg: RoboflowSource, out: Path, what: str) -> None:
    """One attempt in a child process, killed after `cfg.timeout_s`; re-raise its outcome here."""
    with tempfile.TemporaryDirectory(prefix="sentinel-roboflow-") as scratch:
        outcome_file = Path(scratch) / "outcome.json"
        request = {"cfg": plain(cfg), "out": str(out), "outcome": str(outcome_file)}
        env = {**os.environ, CHILD_LOG_LEVEL_ENV: str(logging.getLogger().getEffectiveLevel())}
        child = subprocess.Popen(
            [sys.executable, "-m", "sentinel.dataset.sources.roboflow", json.dumps(request)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # the SDK's progress bars
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            errors="replace",
        )
        stop = threading.Event()
        watcher = threading.Thread(target=log_download_progress, args=(out, what, stop), daemon=True)
        watcher.start()
        try:
            _, stderr = child.communicate(timeout=cfg.timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise SentinelError(
                f"Roboflow {what}: no complete download after {cfg.timeout_s:.0f} s (the version may still be "
                "generating on Roboflow). Fix: try again later or raise datasets.<name>.timeout_s"
            ) from None
        finally:
            stop.set()
            watcher.join()
        for line in stderr.splitlines():
            log.debug("roboflow sdk: %s", redact(line))
        outcome = json.loads(outcome_file.read_text()) if outcome_file.is_file() else None
    if outcome is None:
        last = redact(stderr.strip().splitlines()[-1]) if stderr.strip() else "no output"
        raise SentinelError(f"Roboflow {what}: the download process died (exit {child.returncode}: {last})")
    if outcome["kind"] == "transient":
        raise _Transient(outcome["message"])
    if outcome["kind"] == "error":
        raise SentinelError(outcome["message"]) from None


PROGRESS_EVERY_S = 10.0  # the SDK's own progress bars go nowhere (its stdout): this says how far it is


def log_download_progress(out: Path, what: str, stop: threading.Event, every_s: float = PROGRESS_EVERY_S) -> None:
    """Until `stop`: every `every_s` seconds, how much of the download is in `out` so far."""
    started = time.monotonic()
    while not stop.wait(every_s):
        size = folder_bytes(out)
        log.info("Roboflow %s: %.1f MB downloaded so far (%.0f s)", what, size / 1e6, time.monotonic() - started)


def folder_bytes(folder: Path) -> int:
    """Bytes in `folder` now; a file the SDK moves or deletes meanwhile counts as nothing."""
    total = 0
    for path in folder.rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:
            continue
    return total


def _child_main(request_json: str) -> None:
    """Entry of the download child: one SDK download, its outcome written as JSON for the parent."""
    request = json.loads(request_json)
    level = int(os.environ.get(CHILD_LOG_LEVEL_ENV, logging.WARNING))
    logging.basicConfig(level=level, stream=sys.stderr, format="%(name)s: %(message)s")
    cfg = RoboflowSource(**request["cfg"])
    outcome: dict[str, str] = {"kind": "ok", "message": ""}
    try:
        _download_once(api_key(), cfg, Path(request["out"]))
    except _Transient as error:
        outcome = {"kind": "transient", "message": redact(str(error))}
    except SentinelError as error:
        outcome = {"kind": "error", "message": redact(str(error))}
    target = Path(request["outcome"])
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(outcome))
    os.replace(tmp, target)


def _download_once(key: str, cfg: RoboflowSource, out: Path) -> None:
    statuses: list[int] = []
    with _sdk_workarounds(statuses):
        try:
            from roboflow import Roboflow

            project = Roboflow(api_key=key).workspace(cfg.workspace).project(cfg.project)
            project.version(cfg.version).download(cfg.format, location=str(out), overwrite=True)
        except SentinelError:
            raise
        except Exception as error:
            raise _classify(error, statuses, cfg) from None
    if not (out / "data.yaml").is_file():
        raise SentinelError(f"Roboflow {cfg.workspace}/{cfg.project}/{cfg.version}: the export has no data.yaml")


def _classify(error: Exception, statuses: list[int], cfg: RoboflowSource) -> Exception:
    """Turn an SDK exception into a retryable _Transient or a clear SentinelError, without the key."""
    import requests

    status = statuses[-1] if statuses else None
    text = redact(f"{type(error).__name__}: {error}")[:300]
    where = f"Roboflow {cfg.workspace}/{cfg.project}/{cfg.version}"
    if isinstance(error, (requests.ConnectionError, requests.Timeout)) or status in TRANSIENT_STATUS:
        return _Transient(f"HTTP {status}: {text}" if status else text)
    if status == 401 or ("api key" in str(error).lower() and status in (None, 403)):
        return SentinelError(
            f"{where}: the API key in {ROBOFLOW_KEY_ENV} was rejected (HTTP {status}). Fix: "
            "check the key and that it belongs to a workspace that can read this project"
        )
    if status == 403:
        return SentinelError(f"{where}: access denied (HTTP 403). Fix: check the key's workspace permissions")
    if status == 404:
        return SentinelError(
            f"{where}: not found (HTTP 404). Fix: check datasets.<name>.workspace, project "
            "and version against the dataset's URL on app.roboflow.com"
        )
    if "could not find version" in str(error).lower() or isinstance(error, (KeyError, IndexError)):
        return SentinelError(f"{where}: the version or format does not exist ({text})")
    return SentinelError(f"{where}: download failed ({text})")


@contextmanager
def _sdk_workarounds(statuses: list[int]) -> Iterator[None]:
    """Patch the SDK's HTTP helpers (timeout, status capture) and its zip extraction, for this call only."""
    import roboflow.core.version as sdk_version
    import roboflow.util.http as sdk_http

    originals = {name: getattr(sdk_http, name) for name in ("request", "get", "post", "put", "patch", "head")}

    def with_timeout(function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", REQUEST_TIMEOUT)
            response = function(*args, **kwargs)
            statuses.append(response.status_code)
            return response

        return call

    def checked_extract(location: str, desc: str = "") -> None:
        # The SDK saves the zip response without looking at its status: a 429/5xx body would be "the zip".
        if statuses and statuses[-1] != 200:
            raise RuntimeError(f"HTTP {statuses[-1]} while downloading the export zip")
        safe_extract_zip(location, desc)

    original_extract = sdk_version.extract_zip
    try:
        for name, function in originals.items():
            setattr(sdk_http, name, with_timeout(function))
        sdk_version.extract_zip = checked_extract
        yield
    finally:
        for name, function in originals.items():
            setattr(sdk_http, name, function)
        sdk_version.extract_zip = original_extract


def safe_extract_zip(location: str, desc: str = "") -> None:
    """Drop-in for roboflow.util.general.extract_zip: validate every member first, then extract."""
    folder = Path(location)
    archive = folder / "roboflow.zip"
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            for member in members:
                _check_member_path(member.filename, archive)
            bad = zipped.testzip()
            if bad is not None:
                raise SentinelError(f"{archive}: member {bad!r} is corrupt (CRC mismatch). Fix: download again")
            zipped.extractall(folder)
    except zipfile.BadZipFile as error:
        raise SentinelError(f"{archive}: not a valid zip archive ({error}). Fix: download again") from None
    archive.unlink()


def _check_member_path(name: str, archive: Path) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and path.parts[0].endswith(":")):
        raise SentinelError(f"{archive}: refusing member {name!r}, whose path leaves the download folder (zip-slip)")


def fix_data_yaml(root: Path) -> list[str]:
    """Point train/val/test at the split folders the export contains (roboflow-python#240); return the missing."""
    path = root / "data.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    missing = []
    for split, folder in SPLIT_FOLDERS.items():
        if (root / folder / "images").is_dir():
            data[split] = f"{folder}/images"
        else:
            data.pop(split, None)
            missing.append(split)
    data.pop("path", None)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return missing


def _empty_folder(folder: Path) -> None:
    import shutil

    for child in folder.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


if __name__ == "__main__":
    _child_main(sys.argv[1])
