"""Run folders: where a stage's result lives, finding the `latest` one, and the stage index for mode=all.

Every stage that finishes records `<stage>_result.json` in its run folder and an entry in
data_dir/stages/<stage>/<key>.json, where the key hashes the stage's inputs. mode=all looks the key up
before running a stage, so a rerun after a crash skips what is already done for the same inputs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from sentinel.atomic import target_lock
from sentinel.errors import ConfigError


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write to a temporary sibling and rename: readers see the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def write_state(folder: Path, stage: str, key: str, status: str, **extra: str) -> None:
    """`<stage>_state.json`: which inputs a long job in this folder works on, and whether it finished."""
    write_json_atomic(folder / f"{stage}_state.json", {"key": key, "status": status, **extra})


def newest_unfinished(stage: str, key: str, exclude: Path | None = None, needs: str = "") -> Path | None:
    """The newest run folder under outputs/ whose `stage` job on these inputs started and did not finish
    (and, if `needs` is given, left that file behind to resume from)."""
    found = []
    for state_file in Path("outputs").resolve().glob(f"*/*/{stage}_state.json"):
        state = json.loads(state_file.read_text())
        folder = state_file.parent
        if state.get("key") != key or state.get("status") == "done" or folder == exclude:
            continue
        if not needs or (folder / needs).is_file():
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
    if not index.is_file():
        return None
    entry = json.loads(index.read_text())
    if not all(Path(entry.get(name, "")).exists() for name in needed):
        return None
    return entry


def newest_result(stage: str, search_root: Path, match: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The newest `<stage>_result.json` under search_root (outputs/ or multirun/), optionally matching fields."""
    found = []
    for path in search_root.glob(f"**/{stage}_result.json"):
        entry = json.loads(path.read_text())
        if all(entry.get(k) == v for k, v in (match or {}).items()):
            found.append((path.stat().st_mtime, entry))
    return max(found, key=lambda pair: pair[0])[1] if found else None


def resolve_result(value: str, stage: str, key: str, match: dict[str, Any] | None = None) -> dict[str, Any]:
    """`latest` → newest result of `stage` under outputs/ and multirun/; a path → that run folder's result."""
    if value == "latest":
        candidates = [
            r
            for root in (Path("outputs"), Path("multirun"))
            if root.is_dir()
            for r in [newest_result(stage, root.resolve(), match)]
            if r
        ]
        if not candidates:
            raise ConfigError(
                key,
                f"no finished {stage} run found under outputs/ or multirun/",
                f"run mode={stage} first, or give a run folder",
            )
        return max(candidates, key=lambda r: Path(r["run_dir"], f"{stage}_result.json").stat().st_mtime)
    folder = Path(value).expanduser().resolve()
    result = folder / f"{stage}_result.json"
    if not result.is_file():
        raise ConfigError(
            key,
            f"{folder} holds no finished {stage} run ({result.name} missing)",
            f"give a run folder of mode={stage}, or latest",
        )
    return json.loads(result.read_text())


def link_or_copy(source: Path, target: Path) -> None:
    """Bring an artefact of an earlier run into this run folder without duplicating its bytes if possible."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
