"""Run folders: where a stage's result lives, finding the `latest` one, and the stage index for mode=all.

Every stage that finishes records `<stage>_result.json` in its run folder and an entry in
data_dir/stages/<stage>/<key>.json, where the key hashes the stage's inputs. mode=all looks the key up
before running a stage, so a rerun after a crash skips what is already done for the same inputs, and
`latest` is the newest such entry on the same dataset. Long jobs also keep `<stage>_state.json` (running,
interrupted or done), listed under data_dir/stages/<stage>/runs/, which is what `resume` looks for.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from sentinel.errors import ConfigError, SentinelError
from sentinel.runtime.atomic import target_lock
from sentinel.runtime.fingerprint import stable_hash

log = logging.getLogger(__name__)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write to a temporary sibling and rename: readers see the old file or the new one, never half."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` to a temporary sibling of `path`, then rename it onto `path`: a crash or a full disk
    leaves the previous file whole, and readers never see half of one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """`path.write_text(text)`, but a crash or a full disk leaves the previous file whole."""
    write_atomic(path, lambda tmp: tmp.write_text(text))


def save_image_atomic(image: Any, path: Path) -> bool:
    """An OpenCV image (BGR array) encoded by the suffix of `path` (JPEG, PNG, …) and written through a
    temporary sibling; False, and nothing written, when OpenCV cannot encode it so."""
    import cv2

    ok, data = cv2.imencode(path.suffix or ".jpg", image)
    if ok:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: tmp.write_bytes(data.tobytes()))
    return bool(ok)


def save_figure_atomic(fig: Any, path: Path, dpi: int = 100) -> None:
    """`fig.savefig(path)` through a temporary sibling (format from the suffix); closes the figure."""
    import matplotlib.pyplot as plt

    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON file Sentinel wrote earlier; an empty or corrupt one is a clear error naming it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SentinelError(
            f"{path}: cannot read this {what} ({type(error).__name__}: {error}). Fix: delete that run folder's "
            "file (or the whole run folder) and run again, or give another run folder"
        ) from None
    if not isinstance(data, dict):
        raise SentinelError(f"{path}: this {what} is not a JSON object. Fix: delete it and run again")
    return data


def _read_json_or_none(path: Path) -> dict[str, Any] | None:
    """For scans over many runs: an unreadable entry is skipped (and logged), not fatal."""
    try:
        return read_json(path, "record")
    except SentinelError as error:
        log.warning("skipping %s", error)
        return None


def _runs_index(data_dir: Path, stage: str) -> Path:
    return data_dir / "stages" / stage / "runs"


def write_state(folder: Path, stage: str, key: str, status: str, data_dir: Path, **extra: str) -> None:
    """`<stage>_state.json`: which inputs a long job in this folder works on, and whether it finished.

    The folder is also listed under data_dir/stages/<stage>/runs/, so `resume` finds it wherever Hydra put
    the run (outputs/, multirun/ or any hydra.run.dir).
    """
    write_json_atomic(folder / f"{stage}_state.json", {"key": key, "status": status, **extra})
    index = _runs_index(data_dir, stage)
    index.mkdir(parents=True, exist_ok=True)
    write_json_atomic(index / f"{stable_hash(str(folder.resolve()))}.json", {"run_dir": str(folder.resolve())})


RUN_STATUS = "run_status.json"  # in the run folder: how the run ended, in MLflow's words (compare reads it)


def write_run_status(run_dir: Path, mode: str, status: str, **extra: Any) -> None:
    """RUNNING, then FINISHED, FAILED or KILLED: what a run folder says of its run, with tracking=none too."""
    write_json_atomic(run_dir / RUN_STATUS, {"mode": mode, "status": status, "pid": os.getpid(), **extra})


def read_run_status(run_dir: Path) -> dict[str, Any]:
    """run_status.json, or {} when the folder has none (yet)."""
    path = run_dir / RUN_STATUS
    return (_read_json_or_none(path) or {}) if path.is_file() else {}


def run_finished(folder: Path) -> bool:
    """The run in `folder` ended well: its run_status.json says FINISHED (folders from before it existed: a
    stage recorded a result there)."""
    status = folder / RUN_STATUS
    if status.is_file():
        return read_json(status, "the run's status").get("status") == "FINISHED"
    return any(folder.glob("*_result.json"))


RUN_LOCK = ".run.lock"  # in the run folder: held by the one live run there (released when its process ends)


@contextmanager
def run_folder_owned(run_dir: Path) -> Iterator[None]:
    """Inside, this process is the only live run in `run_dir`; a second is refused at once, naming the first.

    Two runs in one folder would share its files and its MLflow run. The lock is the kernel's (flock), so a
    killed run leaves nothing to clean up.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(run_dir / RUN_LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        status = read_run_status(run_dir)
        raise ConfigError(
            "hydra.run.dir",
            f"{run_dir} is in use by another run (mode={status.get('mode', '?')}, pid {status.get('pid', '?')})",
            "wait for it to end, or use another run folder (leave hydra.run.dir at its default)",
        ) from None
    try:
        yield
    finally:
        lock.release()


def refuse_other_settings(run_dir: Path, resolved: dict[str, Any]) -> None:
    """A folder whose run finished keeps that run's records: a rerun there must have the same settings.

    The same command again is fine (mode=all reuses every stage); other settings would overwrite
    config_resolved.yaml and the reports of what the folder's weights were trained on. The mode may differ
    (one stage after another in one folder); each stage then checks its own inputs (claim_run_folder).
    """
    status = read_run_status(run_dir)
    earlier_file = run_dir / "config_resolved.yaml"
    if status.get("status") != "FINISHED" or not earlier_file.is_file():
        return
    try:
        earlier = yaml.safe_load(earlier_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return
    old, new = _flat(earlier), _flat(resolved)
    differing = sorted(k for k in old.keys() | new.keys() if k != "mode" and old.get(k) != new.get(k))
    if differing:
        shown = ", ".join(differing[:5]) + (f" and {len(differing) - 5} more" if len(differing) > 5 else "")
        raise ConfigError(
            "hydra.run.dir",
            f"{run_dir} holds a finished run with other settings ({shown}); running here would overwrite its records",
            "use a new run folder (leave hydra.run.dir at its default, or give another)",
        )


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        return {k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): data}


def claim_run_folder(run_dir: Path, stage: str, key: str) -> None:
    """Refuse to run `stage` on other inputs in a run folder that already holds one: it would overwrite it.

    The same inputs again (a rerun after a crash, mode=all twice with one hydra.run.dir) are fine.
    """
    for name in (f"{stage}_result.json", f"{stage}_state.json"):
        path = run_dir / name
        earlier = _read_json_or_none(path) if path.is_file() else None
        if earlier is not None and earlier.get("key", earlier.get("fingerprint")) != key:
            raise ConfigError(
                "hydra.run.dir",
                f"{run_dir} already holds a {stage} run on other inputs ({name}); running here would overwrite it",
                "use a new run folder (leave hydra.run.dir at its default, or give another)",
            )


def read_state(folder: Path, stage: str) -> dict[str, Any] | None:
    path = folder / f"{stage}_state.json"
    return _read_json_or_none(path) if path.is_file() else None


def newest_unfinished(
    stage: str, key: str, data_dir: Path, exclude: Path | None = None, needs: str = ""
) -> Path | None:
    """The newest run folder whose `stage` job on these inputs started and did not finish (and, if `needs`
    is given, left that file or folder behind to resume from)."""
    found = []
    for entry_file in _runs_index(data_dir, stage).glob("*.json"):
        entry = _read_json_or_none(entry_file)
        folder = Path(entry["run_dir"]) if entry else None
        state = read_state(folder, stage) if folder else None
        if state is None or state.get("key") != key or state.get("status") == "done" or folder == exclude:
            continue
        if not needs or (folder / needs).exists():
            found.append(folder)
    return max(found, key=lambda p: (p / f"{stage}_state.json").stat().st_mtime) if found else None


def record_result(stage: str, key: str, run_dir: Path, data_dir: Path, payload: dict[str, Any]) -> None:
    entry = {"stage": stage, "key": key, "run_dir": str(run_dir), **payload}
    write_json_atomic(run_dir / f"{stage}_result.json", entry)
    index = data_dir / "stages" / stage / f"{key}.json"
    index.parent.mkdir(parents=True, exist_ok=True)
    with target_lock(index):
        write_json_atomic(index, entry)


def lookup_result(stage: str, key: str, data_dir: Path, needed: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """A finished result for these inputs whose files (payload keys in `needed`) still exist, else None."""
    index = data_dir / "stages" / stage / f"{key}.json"
    entry = _read_json_or_none(index) if index.is_file() else None
    if entry is None or not all(Path(entry.get(name, "")).exists() for name in needed):
        return None
    return entry


def newest_result(stage: str, data_dir: Path, match: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The newest finished `stage` run recorded in data_dir whose fields match `match` (e.g. the dataset)."""
    found = []
    for index in (data_dir / "stages" / stage).glob("*.json"):
        entry = _read_json_or_none(index)
        if entry is None or not all(entry.get(k) == v for k, v in (match or {}).items()):
            continue
        result_file = Path(entry["run_dir"]) / f"{stage}_result.json"
        if result_file.is_file():
            found.append((result_file.stat().st_mtime, entry))
    return max(found, key=lambda pair: pair[0])[1] if found else None


def resolve_result(
    value: str, stage: str, key: str, data_dir: Path, match: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`latest` → the newest finished `stage` run on the same inputs (`match`); a path → that run's result."""
    if value == "latest":
        entry = newest_result(stage, data_dir, match)
        if entry is None:
            on = " on this dataset" if match and "dataset" in match else ""
            raise ConfigError(
                key,
                f"no finished {stage} run{on} found (runs are recorded under {data_dir / 'stages'})",
                f"run mode={stage} first with the same datasets and merge settings, or give a run folder",
            )
        return entry
    folder = Path(value).expanduser().resolve()
    result = folder / f"{stage}_result.json"
    if not result.is_file():
        raise ConfigError(
            key,
            f"{folder} holds no finished {stage} run ({result.name} missing)",
            f"give a run folder of mode={stage}, or latest",
        )
    return read_json(result, f"{stage} result")


def link_or_copy(source: Path, target: Path) -> None:
    """Bring an artefact of an earlier run into this run folder without duplicating its bytes if possible.

    Never deletes anything: when `target` already is `source` (the same run folder reused) there is
    nothing to do, and otherwise the new file is made under a temporary name and renamed over `target`.
    """
    _place_atomic(source, target, link=True)


def copy_file_atomic(source: Path, target: Path) -> None:
    """Copy `source` to `target` through a temporary name: a full disk leaves the old target whole."""
    _place_atomic(source, target, link=False)


def _place_atomic(source: Path, target: Path, link: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and os.path.samefile(source, target):
        return
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        if not (link and _hard_link(source, tmp)):
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _hard_link(source: Path, target: Path) -> bool:
    """True when `target` is now a hard link to `source` (False across filesystems or where not allowed)."""
    try:
        os.link(source, target)
    except OSError:
        return False
    return True
