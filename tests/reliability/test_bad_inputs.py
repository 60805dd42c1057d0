"""Bad input, end to end through train.py, against a user's YOLO folder made read-only.

Every case asserts: the exit code, one clear message naming the file (and line) or key, no Python
traceback, the source folder byte-for-byte unchanged, and nothing written outside the run folder and
data_dir. Inputs that are only suspicious (empty or truncated image, PNG named .jpg, image without label,
label without image) are accepted with exit 0 and counted in the report instead.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from builders import jpeg_bytes, make_source, png_bytes, tree_digest
from conftest import mine_args, outside_run_and_data, run_train

GOOD = "0 0.5 0.5 0.2 0.2\n"


def build(tmp_path: Path, label: str = GOOD, yaml_text: str | None = None, extra: dict | None = None) -> Path:
    train = {"a.jpg": (jpeg_bytes(1), label), "b.jpg": (jpeg_bytes(2), GOOD), **(extra or {})}
    root = make_source(
        tmp_path / "src" / "mine", ["gun", "knife"], {"train": train, "val": {"v.jpg": (jpeg_bytes(3), GOOD)}}
    )
    if yaml_text is not None:
        (root / "dataset.yaml").write_text(yaml_text)
    conf = tmp_path / "conf" / "datasets"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text(
        f"# @package datasets\ndefaults:\n  - /sentinel/source/yolo@mine\n  - _self_\nmine:\n  path: {root}\n"
    )
    return root


def outside_snapshot(tmp_path: Path) -> set[str]:
    """Every file outside the run folder, data_dir and the local tracking store."""
    files = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    return {f for f in files if outside_run_and_data(f)}


def run_case(tmp_path: Path, root: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    before, outside = tree_digest(root), outside_snapshot(tmp_path)
    subprocess.run(["chmod", "-R", "a-w", str(root)], check=True)
    try:
        result = run_train(["mode=prep", *mine_args(tmp_path), *args], cwd=tmp_path)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=True)
    assert tree_digest(root) == before  # every file's bytes and mode, as before the run
    assert outside_snapshot(tmp_path) == outside
    assert "Traceback" not in result.stderr
    report_file = tmp_path / "run" / "prep_report.json"
    return result, json.loads(report_file.read_text()) if report_file.is_file() else None


LABEL = "labels/train/a.txt"
FAILING = [
    ("too_few_fields", {"label": "0 0.5 0.5 0.2\n"}, f"{LABEL}:1: wrong_field_count"),
    ("not_a_number", {"label": GOOD + "1 0.5 x 0.2 0.2\n"}, f"{LABEL}:2: not_a_number"),
    ("nan", {"label": "0 nan 0.5 0.2 0.2\n"}, f"{LABEL}:1: non_finite"),
    ("negative", {"label": "0 -0.5 0.5 0.2 0.2\n"}, f"{LABEL}:1: out_of_range"),
    ("above_one", {"label": "0 0.5 1.5 0.2 0.2\n"}, f"{LABEL}:1: out_of_range"),
    ("zero_size", {"label": "0 0.5 0.5 0.0 0.2\n"}, f"{LABEL}:1: zero_size"),
    ("class_out_of_range", {"label": "2 0.5 0.5 0.2 0.2\n"}, f"{LABEL}:1: bad_class_id"),
    (
        "malformed_data_yaml",
        {"yaml_text": "train: images/train\nnames: [gun, knife\n"},
        "dataset.yaml:3: malformed YAML",
    ),
    ("names_missing", {"yaml_text": "train: images/train\nval: images/val\n"}, "`names` is missing or empty"),
    ("names_empty", {"yaml_text": "train: images/train\nnames: {}\n"}, "`names` is missing or empty"),
]


@pytest.mark.parametrize(("build_args", "message"), [c[1:] for c in FAILING], ids=[c[0] for c in FAILING])
def test_bad_source_fails_clearly_and_changes_nothing(tmp_path, build_args, message):
    root = build(tmp_path, **build_args)
    result, _ = run_case(tmp_path, root, "merge.on_bad_label=fail")
    assert result.returncode == 1
    assert message in result.stderr
    assert not list((tmp_path / "data" / "merged").glob("[!.]*"))  # nothing half-built in place


COUNTED = [
    ("empty_image", {"extra": {"e.jpg": (b"", GOOD)}}, ("skipped_images", "undecodable_image|empty_image_file")),
    (
        "truncated_jpeg",
        {"extra": {"t.jpg": (jpeg_bytes(7, size=64)[:300], GOOD)}},
        ("skipped_images", "undecodable_image"),
    ),
    ("png_named_jpg", {"extra": {"p.jpg": (png_bytes(5), GOOD)}}, ("notes", "extension_does_not_match_content")),
    ("image_without_label", {"extra": {"n.jpg": (jpeg_bytes(8), None)}}, ("notes", "no_label_file_kept_as_background")),
    ("bad_line_skipped", {"label": GOOD + "0 nan 0.5 0.2 0.2\n"}, ("skipped_label_lines", "non_finite")),
]


@pytest.mark.parametrize(("build_args", "expected"), [c[1:] for c in COUNTED], ids=[c[0] for c in COUNTED])
def test_suspicious_input_is_accepted_and_counted(tmp_path, build_args, expected):
    root = build(tmp_path, **build_args)
    result, report = run_case(tmp_path, root)
    assert result.returncode == 0, result.stderr[-2000:]
    section, reasons = expected
    counted = report[section]["mine"]["train"]
    assert any(counted.get(reason) == 1 for reason in reasons.split("|")), counted


def test_label_without_image_is_counted(tmp_path):
    root = build(tmp_path)
    subprocess.run(["chmod", "-R", "u+w", str(root)], check=True)
    (root / "labels" / "train" / "ghost.txt").write_text(GOOD)
    result, report = run_case(tmp_path, root)
    assert result.returncode == 0 and report["orphan_labels"] == {"mine": {"train": 1}}


CONFIG_CASES = [
    ("unknown_dataset", ["datasets=[mine,nope]"], "Available options in 'datasets'"),
    ("unknown_key", ["datasets.mine.pth=x"], "Key 'pth' not in 'YoloSource'"),
    ("wrong_type", ["merge.workers=many"], "merge.workers"),
    ("missing_path", ["datasets.mine.path=/does/not/exist"], "/does/not/exist: no data.yaml or dataset.yaml found"),
]


@pytest.mark.parametrize(("args", "message"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_fails_clearly_and_changes_nothing(tmp_path, args, message):
    root = build(tmp_path)
    result, _ = run_case(tmp_path, root, *args)
    assert result.returncode == 1 and message in result.stderr
