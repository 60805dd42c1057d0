"""Read a YOLO dataset folder through its data.yaml, the way Ultralytics reads it, without writing to it.

Handles what real exports contain: `names` as a list or an {id: name} dict, `path` absolute or relative,
train/val/test as a folder, an image-list .txt or a list of those, and Roboflow's `../train/images` paths
that point one level too high (roboflow-python#240; Ultralytics' check_det_dataset strips the `../` too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sentinel.dataset.images import IMAGE_SUFFIXES
from sentinel.errors import SentinelError

SPLITS = ("train", "val", "test")
YAML_NAMES = ("data.yaml", "dataset.yaml", "data.yml", "dataset.yml")


@dataclass(frozen=True)
class SourceData:
    """A source on local disk, ready to merge. Paths are absolute; nothing here is ever written."""

    name: str
    yaml_path: Path
    names: list[str]
    splits: dict[str, list[Path]]  # split → folders, list files or image files, as data.yaml names them
    missing_splits: list[str] = field(default_factory=list)
    origin: dict[str, Any] = field(default_factory=dict)  # where it came from, for the report
    # split → the paths data.yaml gives for it that do not exist (an error names them, not just the source)
    missing_paths: dict[str, list[str]] = field(default_factory=dict)


def find_data_yaml(path: Path) -> Path:
    """`path` itself if it is a YAML file, else the first of data.yaml / dataset.yaml inside it."""
    if path.is_file():
        return path
    for candidate in YAML_NAMES:
        if (path / candidate).is_file():
            return path / candidate
    raise SentinelError(f"{path}: no data.yaml or dataset.yaml found. Fix: point `path` at a YOLO dataset folder")


def read_source(name: str, path: Path, origin: dict[str, Any] | None = None) -> SourceData:
    """Parse the data.yaml of `path` into a SourceData, failing clearly on what Ultralytics would reject."""
    yaml_path = find_data_yaml(path.resolve())
    data = load_yaml_file(yaml_path)
    names = parse_names(data.get("names"), yaml_path)
    if "nc" in data and data["nc"] != len(names):
        raise SentinelError(
            f"{yaml_path}: nc is {data['nc']} but names lists {len(names)} classes. Fix: make them agree"
        )
    root = _dataset_root(data, yaml_path)
    splits: dict[str, list[Path]] = {}
    missing: list[str] = []
    missing_paths: dict[str, list[str]] = {}
    for split in SPLITS:
        entries = data.get(split)
        if entries in (None, "", []):
            missing.append(split)
            continue
        given = [str(e) for e in (entries if isinstance(entries, list) else [entries])]
        resolved = [_resolve_split_entry(root, entry) for entry in given]
        found = [p for p in resolved if p is not None]
        absent = [str(_split_candidate(root, e)) for e, p in zip(given, resolved, strict=True) if p is None]
        if absent:
            missing_paths[split] = absent
        if found:
            splits[split] = found
        else:
            missing.append(split)
    if not splits:
        shown = "; ".join(f"{split}: {', '.join(paths)}" for split, paths in missing_paths.items()) or "none given"
        raise SentinelError(
            f"{yaml_path}: none of train/val/test points at existing images (not there: {shown}). Fix: check its paths"
        )
    origin = origin or {"type": "yolo", "path": str(yaml_path)}
    return SourceData(name, yaml_path, names, splits, missing, origin, missing_paths)


def load_yaml_file(path: Path) -> dict[str, Any]:
    """safe_load with an error naming file and line."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SentinelError(f"{where}: malformed YAML ({getattr(error, 'problem', error)}). Fix the syntax") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SentinelError(f"{path}: cannot read ({error})") from None
    if not isinstance(data, dict):
        raise SentinelError(f"{path}: expected a mapping with names/train/val, got {type(data).__name__}")
    return data


def parse_names(names: Any, yaml_path: Path) -> list[str]:
    """`names` as a list or a dict with ids 0..n-1 → list ordered by id."""
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    if isinstance(names, dict) and names:
        try:
            by_id = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise SentinelError(f"{yaml_path}: names keys must be class ids 0..n-1, got {list(names)}") from None
        if sorted(by_id) != list(range(len(by_id))):
            raise SentinelError(f"{yaml_path}: names ids {sorted(by_id)} are not 0..{len(by_id) - 1}")
        return [by_id[i] for i in range(len(by_id))]
    raise SentinelError(f"{yaml_path}: `names` is missing or empty. Fix: list the classes, e.g. names: [person, gun]")


def class_names_of(yaml_path: Path) -> list[str]:
    """The class names a data.yaml declares, in id order."""
    return parse_names(load_yaml_file(yaml_path).get("names"), yaml_path)


def label_path_for(image: str) -> str:
    """Ultralytics' rule (img2label_paths): the last /images/ in the path becomes /labels/, suffix .txt.

    Strings, not Paths: prep calls this once per image, and pathlib parsing dominated planning time.
    """
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if sa in image:
        image = sb.join(image.rsplit(sa, 1))
    stem, dot, suffix = image.rpartition(".")
    return f"{stem}.txt" if dot and os.sep not in suffix else f"{image}.txt"


IMAGE_SUFFIX_TUPLE = tuple(sorted(IMAGE_SUFFIXES))
# A file's identity for cache keys: (size, mtime_ns, mode, dev, inode). The mode is in it because a file that
# could not be read (no permission) is skipped, and a cached result must not outlive that failure once it is
# fixed; device and inode key prep's per-file record (sentinel.dataset.file_records).
FileStat = tuple[int, int, int, int, int]
# (absolute path, path relative to the entry with "/" separators, its FileStat)
ScannedFile = tuple[str, str, FileStat]


def scan_images(entry: Path) -> list[ScannedFile]:
    """The image files an entry names, sorted, with their stats: a folder (recursive), a list .txt, an image."""
    if entry.is_dir():
        return sorted(_scan_folder(str(entry), IMAGE_SUFFIX_TUPLE))
    if entry.suffix == ".txt":
        lines = [ln.strip() for ln in entry.read_text(encoding="utf-8").splitlines() if ln.strip()]
        paths = [ln if os.path.isabs(ln) else os.path.normpath(os.path.join(entry.parent, ln)) for ln in lines]
        return [(p, os.path.basename(p), _stat_of(p)) for p in paths]
    return [(str(entry), entry.name, _stat_of(str(entry)))]


def scan_label_files(folder: str) -> dict[str, FileStat]:
    """Every .txt under `folder` (recursive) with its FileStat; empty when the folder is missing."""
    if not os.path.isdir(folder):
        return {}
    return {path: stat for path, _, stat in _scan_folder(folder, (".txt",))}


def _scan_folder(root: str, suffixes: tuple[str, ...]) -> list[ScannedFile]:
    """Files under `root` whose lower-cased name ends with one of `suffixes` (str.endswith: C speed).

    Symbolic links to folders are followed once: a folder already visited (a link loop) is not entered again.
    """
    found: list[ScannedFile] = []
    stack = [(root, "")]
    seen: set[tuple[int, int]] = set()
    while stack:
        folder, rel = stack.pop()
        try:
            st = os.stat(folder)
        except OSError:  # a dangling link or a folder we may not read: nothing to take from it
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir():
                    stack.append((entry.path, f"{rel}{entry.name}/"))
                elif entry.name.lower().endswith(suffixes) and entry.is_file():
                    st = entry.stat()
                    found.append((entry.path, f"{rel}{entry.name}", stat_tuple(st)))
            except OSError:  # a link loop (ELOOP) or a vanished file
                continue
    return found


def stat_tuple(st: os.stat_result) -> FileStat:
    return (st.st_size, st.st_mtime_ns, st.st_mode, st.st_dev, st.st_ino)


def stat_or_none(path: str) -> FileStat | None:
    """The FileStat of `path` (links followed), None when it does not exist or cannot be stat'ed."""
    try:
        return stat_tuple(os.stat(path))
    except OSError:
        return None


def _stat_of(path: str) -> FileStat:
    return stat_or_none(path) or (0, 0, 0, 0, 0)


def _dataset_root(data: dict[str, Any], yaml_path: Path) -> Path:
    raw = data.get("path")
    if not raw:
        return yaml_path.parent
    root = Path(str(raw)).expanduser()
    if root.is_absolute() and not root.exists():
        # Written where the dataset used to be (a folder moved with its project): its own folder is the root.
        return yaml_path.parent
    return root if root.is_absolute() else (yaml_path.parent / root).resolve()


def _split_candidate(root: Path, entry: str) -> Path:
    return Path(entry) if os.path.isabs(entry) else (root / entry).resolve()


def _resolve_split_entry(root: Path, entry: str) -> Path | None:
    candidate = _split_candidate(root, entry)
    if not candidate.exists() and entry.startswith("../"):
        candidate = (root / entry[3:]).resolve()  # Roboflow's one-level-too-high paths (roboflow-python#240)
    return candidate if candidate.exists() else None
