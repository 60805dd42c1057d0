"""Prep's per-file record: a rebuild with other merge options reads no input again; a changed file is read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from builders import jpeg_bytes, make_source
from sentinel.config.schema import MergeConfig
from sentinel.dataset.file_records import FileRecords
from sentinel.dataset.merge import merge_sources
from sentinel.dataset.sources.yolo_dir import read_source


def merge_cfg(**overrides):
    return OmegaConf.merge(OmegaConf.structured(MergeConfig), {"samples_grid": 0, **overrides})


def files(count: int, seed: int, label: str):
    return {f"img_{i}.jpg": (jpeg_bytes(seed * 1000 + i), label) for i in range(count)}


@pytest.fixture
def sources(tmp_path):
    a = make_source(
        tmp_path / "src" / "a",
        ["Handgun", "person"],
        {"train": files(6, 1, "0 0.5 0.5 0.2 0.2\n1 0.2 0.2 0.1 0.1\n"), "val": files(3, 2, "1 0.5 0.5 0.3 0.3\n")},
    )
    b = make_source(tmp_path / "src" / "b", ["gun"], {"train": files(4, 3, "0 0.4 0.4 0.2 0.2\n")})
    return [a, b]


def merge(folders: list[Path], data_dir: Path, **options):
    return merge_sources([read_source(f.name, f) for f in folders], merge_cfg(**options), data_dir)


def labels_of(result) -> dict[str, str]:
    root = result.folder / "labels"
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*.txt"))}


def test_a_rebuild_with_other_merge_options_reads_no_file_again(sources, tmp_path):
    first = merge(sources, tmp_path / "d")
    assert first.report["file_records"] == {
        "images_read": 13,
        "images_from_record": 0,
        "labels_read": 13,
        "labels_from_record": 0,
    }
    for options in (
        {"aliases": {"handgun": "gun"}},
        {"exclude": ["person"]},
        {"classes": ["person", "Handgun", "gun"]},
    ):
        rebuilt = merge(sources, tmp_path / "d", **options)
        assert not rebuilt.cache_hit
        assert rebuilt.report["file_records"] == {
            "images_read": 0,
            "images_from_record": 13,
            "labels_read": 0,
            "labels_from_record": 13,
        }
        clean = merge(sources, tmp_path / f"clean-{len(options)}-{rebuilt.fingerprint}", **options)
        assert labels_of(rebuilt) == labels_of(clean)  # the record gives what reading gives
        history = ("folder", "dataset_yaml", "file_records", "label_files")  # what differs with a build's past
        assert {k: v for k, v in rebuilt.report.items() if k not in history} == {
            k: v for k, v in clean.report.items() if k not in history
        }


def inodes_of(result) -> dict[str, int]:
    root = result.folder / "labels"
    return {str(p.relative_to(root)): p.stat().st_ino for p in sorted(root.rglob("*.txt"))}


def linked_to_earlier(result, earlier) -> set[str]:
    """The label files of `result` that are an inode of `earlier` holding the same bytes."""
    earlier_text = {inode: labels_of(earlier)[name] for name, inode in inodes_of(earlier).items()}
    text = labels_of(result)
    return {name for name, inode in inodes_of(result).items() if earlier_text.get(inode) == text[name]}


def test_a_rebuild_links_each_label_file_an_earlier_build_wrote_with_the_same_bytes(sources, tmp_path):
    first = merge(sources, tmp_path / "d")
    assert first.report["label_files"] == {"written": 13, "linked_from_earlier_builds": 0}
    assert len(set(inodes_of(first).values())) == 13  # equal labels of one build are not shared
    same = merge(sources, tmp_path / "d", balance_warn_ratio=5.0)  # a new build; every label's bytes unchanged
    assert same.report["label_files"] == {"written": 0, "linked_from_earlier_builds": 13}
    assert labels_of(same) == labels_of(first)
    assert linked_to_earlier(same, first) == set(labels_of(same))
    merged = merge(sources, tmp_path / "d", aliases={"handgun": "gun"})  # class ids change in some files
    before, after = labels_of(first), labels_of(merged)
    changed = {name for name in after if after[name] not in before.values()}
    assert 0 < len(changed) < len(after)
    assert linked_to_earlier(merged, first) == set(after) - changed
    assert merged.report["label_files"] == {"written": len(changed), "linked_from_earlier_builds": 13 - len(changed)}


def test_an_earlier_label_file_edited_since_is_not_linked(sources, tmp_path):
    first = merge(sources, tmp_path / "d")
    right = labels_of(first)
    edited = sorted((first.folder / "labels" / "train").glob("b__*.txt"))  # all 4 of b's labels: equal bytes
    for label in edited:
        label.write_text("0 0.900000 0.900000 0.100000 0.100000\n")  # someone edits a finished build in place
    rebuilt = merge(sources, tmp_path / "d", balance_warn_ratio=5.0)
    assert labels_of(rebuilt) == right
    assert not {label.stat().st_ino for label in edited} & set(inodes_of(rebuilt).values())
    assert rebuilt.report["label_files"] == {"written": 4, "linked_from_earlier_builds": 9}


def test_a_deleted_earlier_build_has_its_label_files_written_again(sources, tmp_path):
    import shutil

    first = merge(sources, tmp_path / "d")
    expected = labels_of(first)
    shutil.rmtree(first.folder)
    rebuilt = merge(sources, tmp_path / "d", balance_warn_ratio=5.0)
    assert rebuilt.report["label_files"] == {"written": 13, "linked_from_earlier_builds": 0}
    assert labels_of(rebuilt) == expected


def test_the_record_forgets_the_label_files_of_a_deleted_build(sources, tmp_path):
    import shutil

    first = merge(sources, tmp_path / "d")
    gone = merge(sources, tmp_path / "d", aliases={"handgun": "gun"})  # some labels of its own
    assert gone.report["label_files"]["written"] > 0
    shutil.rmtree(gone.folder)
    last = merge(sources, tmp_path / "d", classes=["person", "Handgun", "gun"])  # new labels: the record is saved
    builds = {Path(path).parents[2] for path, *_ in FileRecords.load(tmp_path / "d").written.values()}
    assert builds == {first.folder, last.folder}


def test_copied_builds_never_share_a_label_file(sources, tmp_path):
    merge(sources, tmp_path / "d", link="copy")
    rebuilt = merge(sources, tmp_path / "d", link="copy", balance_warn_ratio=5.0)
    assert rebuilt.report["label_files"] == {"written": 13, "linked_from_earlier_builds": 0}
    assert {p.stat().st_nlink for p in (rebuilt.folder / "labels").rglob("*.txt")} == {1}


def test_an_edited_label_is_read_again(sources, tmp_path):
    merge(sources, tmp_path / "d")
    label = sources[1] / "labels" / "train" / "img_2.txt"
    label.write_text("0 0.6 0.6 0.2 0.2\n")
    rebuilt = merge(sources, tmp_path / "d")
    assert rebuilt.report["file_records"]["labels_read"] == 1
    assert rebuilt.report["file_records"]["images_read"] == 0
    assert labels_of(rebuilt)["train/b__img_2.txt"].split()[1:3] == ["0.600000", "0.600000"]


def test_a_replaced_image_is_read_again_even_with_the_old_size_and_mtime(sources, tmp_path):
    merge(sources, tmp_path / "d")
    image = sources[0] / "images" / "train" / "img_1.jpg"
    old = image.stat()
    replacement = image.with_name(".new.jpg")
    replacement.write_bytes(b"\0" * old.st_size)  # same size, not an image any more
    os.utime(replacement, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(replacement, image)  # a new inode, as tools that write a file and rename it give
    assert (image.stat().st_size, image.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    rebuilt = merge(sources, tmp_path / "d")
    assert rebuilt.report["file_records"]["images_read"] == 1
    assert rebuilt.report["skipped_images"] == {"a": {"train": {"undecodable_image": 1}}}


def test_a_cached_rerun_does_not_rewrite_the_record(sources, tmp_path):
    merge(sources, tmp_path / "d")
    (record,) = (tmp_path / "d" / "records").glob("*.marshal")
    written = record.stat().st_mtime_ns
    assert merge(sources, tmp_path / "d").cache_hit
    merge(sources, tmp_path / "d", balance_warn_ratio=5.0)  # nothing new learnt either: same files, same labels
    assert record.stat().st_mtime_ns == written


def test_a_damaged_record_is_ignored_and_files_are_read_again(sources, tmp_path, caplog):
    first = merge(sources, tmp_path / "d")
    (record,) = (tmp_path / "d" / "records").glob("*.marshal")
    record.write_bytes(b"not a record")
    rebuilt = merge(sources, tmp_path / "d", aliases={"handgun": "gun"})
    assert rebuilt.report["file_records"]["images_read"] == 13
    assert "ignoring the file record" in caplog.text
    assert labels_of(rebuilt).keys() == labels_of(first).keys()


def test_worker_processes_build_what_threads_build_and_fill_the_record(sources, tmp_path, monkeypatch):
    """Big builds check their images in worker processes; the dataset, report and record are the same."""
    import sentinel.dataset.parallel

    threads = merge(sources, tmp_path / "threads", workers=2)
    monkeypatch.setattr(sentinel.dataset.parallel, "PROCESS_POOL_MIN_ITEMS", 1)
    pools, real_pool = [], sentinel.dataset.parallel.ProcessPoolExecutor
    monkeypatch.setattr(
        sentinel.dataset.parallel, "ProcessPoolExecutor", lambda *a, **k: pools.append(1) or real_pool(*a, **k)
    )
    processes = merge(sources, tmp_path / "processes", workers=2)
    assert pools == [1]
    assert labels_of(processes) == labels_of(threads)
    assert sorted(os.listdir(processes.folder / "images" / "train")) == sorted(
        os.listdir(threads.folder / "images" / "train")
    )
    ignore = ("folder", "dataset_yaml")
    assert {k: v for k, v in processes.report.items() if k not in ignore} == {
        k: v for k, v in threads.report.items() if k not in ignore
    }
    rebuilt = merge(sources, tmp_path / "processes", workers=2, aliases={"handgun": "gun"})
    assert rebuilt.report["file_records"]["images_read"] == 0  # the workers' entries reached the saved record
    assert pools == [1]  # and a rebuild that reads no image starts no worker process: threads are faster there


def test_a_worker_process_that_dies_gives_one_clear_error(sources, tmp_path):
    """An unguarded script re-runs itself in each worker (Python's spawn rule), whose start then fails."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import sys\n"
        "from pathlib import Path\n"
        "import sentinel.dataset.merge\n"
        "from omegaconf import OmegaConf\n"
        "from sentinel.errors import SentinelError\n"
        "from sentinel.config.schema import MergeConfig\n"
        "from sentinel.dataset.sources.yolo_dir import read_source\n"
        "sentinel.dataset.parallel.PROCESS_POOL_MIN_ITEMS = 1\n"
        "cfg = OmegaConf.merge(OmegaConf.structured(MergeConfig), {'workers': 2})\n"
        "try:\n"
        "    sentinel.dataset.merge.merge_sources([read_source('a', Path(sys.argv[1]))], cfg, Path(sys.argv[2]))\n"
        "except SentinelError as error:\n"
        "    print('ERROR:', error)\n"
        "    sys.exit(1)\n"
    )
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(script), str(sources[0]), str(tmp_path / "d")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    # each worker re-runs the script, whose merge then refuses to start (instead of waiting for the lock)
    errors = [ln for ln in result.stdout.splitlines() if ln.startswith("ERROR:")]
    parent = [ln for ln in errors if "a worker process of the merge died" in ln]
    assert len(parent) == 1 and "__main__" in parent[0] and "merge.workers=1" in parent[0], errors
