"""The merge: one class space by name, nothing written to sources, every skip counted, atomic and cached."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

import sentinel.dataset.merge
from builders import jpeg_bytes, make_source, png_bytes, tree_digest
from sentinel.config.schema import MergeConfig
from sentinel.dataset.merge import merge_sources
from sentinel.dataset.sources.yolo_dir import read_source
from sentinel.errors import ConfigError, SentinelError
from sentinel.runtime.faults import KILL_ENV


def merge_cfg(**overrides):
    return OmegaConf.merge(OmegaConf.structured(MergeConfig), overrides)


def files(count: int, seed: int, label: str = "0 0.5 0.5 0.2 0.2\n", ext: str = ".jpg"):
    return {f"img_{i}{ext}": (jpeg_bytes(seed * 100_000 + i), label) for i in range(count)}


def merged_labels(result) -> dict[str, str]:
    root = result.folder / "labels"
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*.txt"))}


@pytest.fixture
def three_sources(tmp_path):
    """guns (roboflow layout), coco-like (fiftyone layout), knives: overlapping names, same file names."""
    a = make_source(
        tmp_path / "src" / "guns",
        ["Handgun", "Person"],
        {"train": files(3, 1, "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n"), "val": files(2, 2)},
        layout="roboflow",
    )
    b = make_source(tmp_path / "src" / "coco", {0: "person"}, {"train": files(3, 3), "val": files(2, 4)})
    c = make_source(
        tmp_path / "src" / "knives",
        ["knife", "pistol"],
        {"train": files(3, 5, "1 0.5 0.5 0.2 0.2\n"), "test": files(2, 6)},
    )
    return [read_source("guns", a), read_source("coco", b), read_source("knives", c)]


def test_classes_merge_by_name_with_aliases(three_sources, tmp_path):
    result = merge_sources(three_sources, merge_cfg(aliases={"handgun": "gun", "Pistol": "gun"}), tmp_path / "d")
    data = yaml.safe_load(result.dataset_yaml.read_text())
    assert data["names"] == {0: "gun", 1: "knife", 2: "person"}
    assert data["path"] == str(result.folder) and Path(data["path"]).is_absolute()
    assert result.report["classes"]["origins"]["gun"] == ["guns:Handgun", "knives:pistol"]
    labels = merged_labels(result)
    assert (
        labels["train/guns__img_0.txt"]
        == "0 0.500000 0.500000 0.200000 0.200000\n2 0.300000 0.300000 0.100000 0.100000\n"
    )
    assert labels["train/coco__img_0.txt"].startswith("2 ")  # coco's person (id 0) is merged id 2
    assert labels["train/knives__img_0.txt"].startswith("0 ")  # knives' pistol (id 1) folded into gun


def test_same_file_names_in_two_sources_do_not_collide(three_sources, tmp_path):
    result = merge_sources(three_sources, merge_cfg(), tmp_path / "d")
    train = sorted(p.name for p in (result.folder / "images" / "train").iterdir())
    assert len(train) == 9 and "guns__img_0.jpg" in train and "coco__img_0.jpg" in train


def test_images_are_hard_links_and_nothing_is_copied(three_sources, tmp_path):
    result = merge_sources(three_sources, merge_cfg(), tmp_path / "d")
    image = result.folder / "images" / "train" / "coco__img_1.jpg"
    source = tmp_path / "src" / "coco" / "images" / "train" / "img_1.jpg"
    assert os.path.samefile(image, source)
    assert result.report["placement"] == {"hardlink": 15} and result.report["bytes_copied"] == 0


def test_the_cyclic_collector_is_off_during_a_build_and_back_after_it_even_after_an_error(
    three_sources, tmp_path, monkeypatch
):
    seen, real_build = [], sentinel.dataset.merge.build_merged

    def build(*args, fail=False):
        seen.append(gc.isenabled())
        if fail:
            raise RuntimeError("build failed")
        return real_build(*args)

    monkeypatch.setattr(sentinel.dataset.merge, "build_merged", build)
    assert gc.isenabled()
    merge_sources(three_sources, merge_cfg(), tmp_path / "d")
    assert seen == [False] and gc.isenabled()
    monkeypatch.setattr(sentinel.dataset.merge, "build_merged", lambda *args: build(*args, fail=True))
    with pytest.raises(RuntimeError, match="build failed"):
        merge_sources(three_sources, merge_cfg(exclude=["knife"]), tmp_path / "d")
    assert seen == [False, False] and gc.isenabled()
    monkeypatch.setattr(sentinel.dataset.merge, "build_merged", build)
    gc.disable()  # a caller that turned it off itself keeps it off
    try:
        merge_sources(three_sources, merge_cfg(), tmp_path / "d2")
        assert seen == [False, False, False] and not gc.isenabled()
    finally:
        gc.enable()


def test_include_exclude_and_explicit_order(three_sources, tmp_path):
    cfg = merge_cfg(aliases={"handgun": "gun", "pistol": "gun"}, exclude=["knife"], classes=["person", "gun"])
    result = merge_sources(three_sources, cfg, tmp_path / "d")
    assert yaml.safe_load(result.dataset_yaml.read_text())["names"] == {0: "person", 1: "gun"}
    assert result.report["classes"]["excluded"] == {"knife": ["knives:knife"]}


@pytest.mark.parametrize(
    ("cfg", "key"),
    [({"include": ["gunn"]}, "merge.include"), ({"classes": ["person"]}, "merge.classes")],
    ids=["unknown", "incomplete"],
)
def test_class_settings_that_match_nothing_fail(three_sources, tmp_path, cfg, key):
    with pytest.raises(ConfigError) as raised:
        merge_sources(three_sources, merge_cfg(**cfg), tmp_path / "d")
    assert raised.value.key == key


BAD = "".join(
    f"{line}\n"
    for line in [
        "0 0.5 0.5 0.2 0.2",
        "0 0.5",
        "0 x 0.5 0.2 0.2",
        "0 nan 0.5 0.2 0.2",
        "0 1.5 0.5 0.2 0.2",
        "0 0.5 0.5 0 0.2",
        "7 0.5 0.5 0.2 0.2",
    ]
)


@pytest.fixture
def messy_source(tmp_path):
    truncated = jpeg_bytes(99, size=64)[:200]
    no_eoi = jpeg_bytes(98) + b"trailing junk"
    root = make_source(
        tmp_path / "src" / "messy",
        ["a"],
        {
            "train": {
                "bad_lines.jpg": (jpeg_bytes(1), BAD),
                "empty.jpg": (b"", "0 0.5 0.5 0.2 0.2\n"),
                "truncated.jpg": (truncated, "0 0.5 0.5 0.2 0.2\n"),
                "png_named.jpg": (png_bytes(3), ""),
                "no_label.jpg": (jpeg_bytes(4), None),
                "no_eoi.jpg": (no_eoi, "0 0.5 0.5 0.2 0.2\n"),
                "dup_of_val.jpg": (jpeg_bytes(50), "0 0.5 0.5 0.2 0.2\n"),
            },
            "val": {
                "leak.jpg": (jpeg_bytes(50), "0 0.5 0.5 0.2 0.2\n"),
                "ok.jpg": (jpeg_bytes(51), "0 0.5 0.5 0.2 0.2\n"),
            },
        },
    )
    (root / "labels" / "train" / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    return root


def test_every_skip_is_counted_by_source_split_and_reason(messy_source, tmp_path):
    result = merge_sources([read_source("messy", messy_source)], merge_cfg(), tmp_path / "d")
    report = result.report
    assert report["skipped_label_lines"]["messy"]["train"] == {
        "bad_class_id": 1,
        "not_a_number": 1,
        "non_finite": 1,
        "out_of_range": 1,
        "wrong_field_count": 1,
        "zero_size": 1,
    }
    assert report["skipped_images"]["messy"]["train"] == {"empty_image_file": 1, "undecodable_image": 1}
    assert report["skipped_images"]["messy"]["val"] == {"leak_of_train_image": 1}
    assert report["notes"]["messy"]["train"] == {
        "extension_does_not_match_content": 1,
        "no_label_file_kept_as_background": 1,
    }
    assert report["orphan_labels"] == {"messy": {"train": 1}}
    assert report["duplicates"]["groups"] == 1 and report["duplicates"]["leaks_into_val_test"] == 1
    assert merged_labels(result)["train/messy__bad_lines.txt"] == "0 0.500000 0.500000 0.200000 0.200000\n"
    assert sorted(p.name for p in (result.folder / "images" / "val").iterdir()) == ["messy__ok.jpg"]
    # Ultralytics rewrites a JPEG without end marker in place: it must be a copy, not a link to the source.
    assert not os.path.samefile(
        result.folder / "images" / "train" / "messy__no_eoi.jpg", messy_source / "images" / "train" / "no_eoi.jpg"
    )
    assert report["placement"] == {"hardlink": 5, "copy": 1}
    assert report["totals"] == {
        "inputs": 9,
        "kept": 6,
        "skipped_images": 3,
        "skipped_label_lines": 6,
        "boxes": 4,
    }
    markdown = (result.folder / "report" / "prep_report.md").read_text()
    assert "6 of 9 images kept, 4 boxes; 3 images and 6 label lines skipped." in markdown
    for row in (
        "| messy | train | undecodable_image | 1 |",
        "| messy | train | empty_image_file | 1 |",
        "| messy | val | leak_of_train_image | 1 |",
        "| messy | train | bad_class_id | 1 |",
        "| messy | train | wrong_field_count | 1 |",
        "| messy | train | no_label_file_kept_as_background | 1 |",
    ):
        assert row in markdown, row


def test_skip_image_policy_drops_the_whole_image(messy_source, tmp_path):
    result = merge_sources([read_source("messy", messy_source)], merge_cfg(on_bad_label="skip_image"), tmp_path / "d")
    assert result.report["skipped_images"]["messy"]["train"]["bad_label_line"] == 1
    assert "train/messy__bad_lines.txt" not in merged_labels(result)


def test_fail_policy_names_file_and_line(messy_source, tmp_path):
    with pytest.raises(SentinelError) as raised:
        merge_sources([read_source("messy", messy_source)], merge_cfg(on_bad_label="fail"), tmp_path / "d")
    assert f"{messy_source / 'labels' / 'train' / 'bad_lines.txt'}:2: wrong_field_count" in str(raised.value)
    assert not list((tmp_path / "d" / "merged").glob("[!.]*"))  # nothing half-built left in place


def test_keep_leaks_when_asked(messy_source, tmp_path):
    result = merge_sources([read_source("messy", messy_source)], merge_cfg(drop_leaks=False), tmp_path / "d")
    assert len(list((result.folder / "images" / "val").iterdir())) == 2


def test_read_only_sources_are_never_modified(messy_source, three_sources, tmp_path):
    src = tmp_path / "src"
    subprocess.run(["chmod", "-R", "a-w", str(src)], check=True)
    try:
        before = tree_digest(src)
        sources = [*three_sources, read_source("messy", messy_source)]
        merge_sources(sources, merge_cfg(), tmp_path / "d")
        merge_sources(sources, merge_cfg(aliases={"handgun": "gun"}), tmp_path / "d")
        assert tree_digest(src) == before
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(src)], check=True)


def test_unchanged_inputs_are_a_cache_hit_and_changes_rebuild(three_sources, tmp_path):
    first = merge_sources(three_sources, merge_cfg(), tmp_path / "d")
    marker_time = (first.folder / ".sentinel-complete.json").stat().st_mtime_ns
    again = merge_sources(three_sources, merge_cfg(), tmp_path / "d")
    assert again.cache_hit and again.folder == first.folder and again.report == first.report
    assert (again.folder / ".sentinel-complete.json").stat().st_mtime_ns == marker_time

    aliased = merge_sources(three_sources, merge_cfg(aliases={"handgun": "gun"}), tmp_path / "d")
    assert not aliased.cache_hit and aliased.fingerprint != first.fingerprint

    label = tmp_path / "src" / "coco" / "labels" / "train" / "img_0.txt"
    label.write_text("0 0.4 0.4 0.2 0.2\n")
    os.utime(label, ns=(time.time_ns(), time.time_ns() + 10**9))
    edited = merge_sources([read_source(s.name, s.yaml_path) for s in three_sources], merge_cfg(), tmp_path / "d")
    assert not edited.cache_hit and edited.fingerprint not in (first.fingerprint, aliased.fingerprint)
    assert merged_labels(edited)["train/coco__img_0.txt"].startswith("2 0.400000 0.400000")


PRELOAD_SCRIPT = """
import sys
from concurrent.futures import ProcessPoolExecutor
from sentinel.dataset.parallel import _forkserver_context
def decoder_loaded():
    return "cv2" in sys.modules
if __name__ == "__main__":
    assert "cv2" not in sys.modules
    with ProcessPoolExecutor(1, mp_context=_forkserver_context()) as pool:
        print("worker started with the decoder:", pool.submit(decoder_loaded).result())
"""


def test_merge_worker_processes_start_with_the_decoder_already_imported(tmp_path):
    # The forkserver imports it once; without the preload each worker of each merge imports it (0.2 s).
    script = tmp_path / "preload.py"
    script.write_text(PRELOAD_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "worker started with the decoder: True" in out.stdout


KILL_SCRIPT = """
import sys
from pathlib import Path
from omegaconf import OmegaConf
import sentinel.dataset.merge
from sentinel.dataset.merge import merge_sources
from sentinel.config.schema import MergeConfig
from sentinel.dataset.sources.yolo_dir import read_source
if sys.argv[3] == "processes":
    sentinel.dataset.parallel.PROCESS_POOL_MIN_ITEMS = 1
    real_pool = sentinel.dataset.parallel.ProcessPoolExecutor
    def announced_pool(*args, **kwargs):
        pool = real_pool(*args, **kwargs)
        print("worker process pool started", flush=True)
        return pool
    sentinel.dataset.parallel.ProcessPoolExecutor = announced_pool
merge_sources([read_source("big", Path(sys.argv[1]))], OmegaConf.structured(MergeConfig), Path(sys.argv[2]))
"""


KILL_POINTS = [
    ("merge.batch", 1, "threads"),
    ("merge.batch", 7, "threads"),
    ("merge.batch", 20, "threads"),
    ("merge.batch", 7, "processes"),
    ("atomic.before_rename", 1, "threads"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("point", "count", "pool"), KILL_POINTS, ids=[f"{p}:{n}:{w}" for p, n, w in KILL_POINTS])
def test_kill_during_build_leaves_nothing_half_built_and_rerun_completes(tmp_path, point, count, pool):
    # The build kills itself at a chosen point (sentinel.runtime.faults): early, middle and late batches of 25, and
    # after everything is written but before the rename. No sleep decides the moment. With worker processes
    # (big builds), the parent dies after folding in a batch, and its workers must not outlive it.
    source = make_source(tmp_path / "src" / "big", ["a"], {"train": files(1500, 7), "val": files(50, 8)})
    data_dir = tmp_path / "d"
    process = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(source), str(data_dir), pool],
        env={**os.environ, KILL_ENV: f"{point}:{count}", "SENTINEL_TEST_BUILD": str(tmp_path)},
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]  # it died at that point, by the signal
    if pool == "processes":
        assert "worker process pool started" in process.stdout  # so "none left" below is not trivially true
        assert_no_process_left_from(tmp_path)
    assert list((data_dir / "merged").glob(".tmp-*"))  # and left its temporary folder behind
    for folder in (data_dir / "merged").glob("[!.]*"):  # whatever is in place must be complete
        assert (folder / ".sentinel-complete.json").is_file() and (folder / "dataset.yaml").is_file()

    resumed = merge_sources([read_source("big", source)], merge_cfg(), data_dir)
    clean = merge_sources([read_source("big", source)], merge_cfg(), tmp_path / "clean")
    assert not resumed.cache_hit and resumed.fingerprint == clean.fingerprint
    assert merged_labels(resumed) == merged_labels(clean)
    assert sorted(os.listdir(resumed.folder / "images" / "train")) == sorted(
        os.listdir(clean.folder / "images" / "train")
    )
    assert not list((data_dir / "merged").glob(".tmp-*"))


def assert_no_process_left_from(tag: Path, timeout_s: float = 30.0) -> None:
    """No process of the killed build is left: its forkserver and workers carry SENTINEL_TEST_BUILD=<tag>.

    They notice the dead parent when their pipe to it closes; the wait is bounded, and the test names them.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        left = [pid for pid in os.listdir("/proc") if pid.isdigit() and _of_build(int(pid), tag)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not left, f"worker processes of the killed build still running: {left}"


def _of_build(pid: int, tag: Path) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone, or not ours to read
        return False
    return f"SENTINEL_TEST_BUILD={tag}".encode() in environ


@pytest.mark.slow
def test_ultralytics_trains_one_epoch_on_the_merged_dataset(three_sources, messy_source, tmp_path):
    from ultralytics import YOLO

    src_before = tree_digest(tmp_path / "src")
    sources = [*three_sources, read_source("messy", messy_source)]
    result = merge_sources(sources, merge_cfg(aliases={"handgun": "gun", "pistol": "gun"}), tmp_path / "d")
    model = YOLO("yolov8n.yaml")
    model.train(
        data=str(result.dataset_yaml),
        epochs=1,
        imgsz=64,
        batch=4,
        workers=0,
        device="cpu",
        project=str(tmp_path / "runs"),
        name="t",
        plots=False,
        verbose=False,
        amp=False,
    )
    assert (tmp_path / "runs" / "t" / "weights" / "last.pt").is_file()
    assert model.names == {0: "a", 1: "gun", 2: "knife", 3: "person"}
    assert tree_digest(tmp_path / "src") == src_before  # incl. the JPEG Ultralytics "restores" in place


def test_build_that_would_not_fit_is_refused_before_writing(three_sources, tmp_path, monkeypatch):
    import sentinel.dataset.plan

    monkeypatch.setattr(sentinel.dataset.plan, "free_bytes", lambda folder: 10 * 2**20)
    with pytest.raises(SentinelError, match="only 10 MiB are free"):
        merge_sources(three_sources, merge_cfg(), tmp_path / "d")
    assert list((tmp_path / "d" / "merged").iterdir()) == [] or all(
        p.name.startswith(".") and p.name.endswith(".lock") for p in (tmp_path / "d" / "merged").iterdir()
    )


CONCURRENT_SCRIPT = """
import sys
from pathlib import Path
from omegaconf import OmegaConf
from sentinel.dataset.merge import merge_sources
from sentinel.config.schema import MergeConfig
from sentinel.dataset.sources.yolo_dir import read_source
result = merge_sources([read_source("big", Path(sys.argv[1]))], OmegaConf.structured(MergeConfig), Path(sys.argv[2]))
print("HIT" if result.cache_hit else "BUILT", result.folder)
"""


@pytest.mark.slow
def test_two_preps_at_once_on_one_data_dir_build_once(tmp_path):
    source = make_source(tmp_path / "src" / "big", ["a"], {"train": files(600, 9), "val": files(40, 10)})
    data_dir = tmp_path / "d"
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_SCRIPT, str(source), str(data_dir)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300)[0].split() for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert sorted(o[0] for o in outputs) == ["BUILT", "HIT"] and outputs[0][1] == outputs[1][1]
    folder = Path(outputs[0][1])
    assert len(list((folder / "labels" / "train").iterdir())) == 600
    assert [p.name for p in (data_dir / "merged").iterdir() if not p.name.startswith(".")] == [folder.name]
