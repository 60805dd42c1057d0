"""Reading data.yaml the way real exports write it, and clear errors for what Ultralytics would reject."""

from __future__ import annotations

import pytest
import yaml

from builders import jpeg_bytes, make_source
from sentinel.dataset.sources.yolo_dir import label_path_for, read_source
from sentinel.errors import SentinelError

ONE = {"a.jpg": (jpeg_bytes(1), "0 0.5 0.5 0.1 0.1\n")}


def test_roboflow_paths_one_level_too_high_are_resolved(tmp_path):
    root = make_source(tmp_path / "rf", ["gun"], {"train": ONE, "val": ONE}, layout="roboflow")
    source = read_source("rf", root)
    assert source.splits["train"] == [root / "train" / "images"]
    assert source.splits["val"] == [root / "valid" / "images"]
    assert source.missing_splits == ["test"]


@pytest.mark.parametrize("names", [["a", "b"], {0: "a", 1: "b"}, {"0": "a", "1": "b"}], ids=["list", "dict", "strkeys"])
def test_names_as_list_or_dict(tmp_path, names):
    root = make_source(tmp_path / "s", names, {"train": ONE})
    assert read_source("s", root).names == ["a", "b"]


def test_absolute_path_and_list_of_folders(tmp_path):
    root = make_source(tmp_path / "s", ["a"], {"train": ONE, "val": ONE})
    data = {"path": str(root), "train": ["images/train", "images/val"], "names": ["a"]}
    (tmp_path / "custom.yaml").write_text(yaml.safe_dump(data))
    source = read_source("s", tmp_path / "custom.yaml")
    assert source.splits["train"] == [root / "images" / "train", root / "images" / "val"]


YAML_ERRORS = [
    ("names_missing", "train: images/train\n", "`names` is missing or empty"),
    ("names_empty", "train: images/train\nnames: []\n", "`names` is missing or empty"),
    ("names_gap", "train: images/train\nnames: {0: a, 2: b}\n", "are not 0..1"),
    ("nc_mismatch", "train: images/train\nnc: 3\nnames: [a]\n", "nc is 3 but names lists 1"),
    ("malformed", "train: images/train\nnames: [a, b\n", "dataset.yaml:3: malformed YAML"),
    ("not_a_mapping", "- a\n- b\n", "expected a mapping"),
    ("no_split_exists", "train: nowhere\nnames: [a]\n", "none of train/val/test"),
]


@pytest.mark.parametrize(("text", "message"), [r[1:] for r in YAML_ERRORS], ids=[r[0] for r in YAML_ERRORS])
def test_bad_data_yaml_fails_clearly(tmp_path, text, message):
    root = make_source(tmp_path / "s", ["a"], {"train": ONE})
    (root / "dataset.yaml").write_text(text)
    with pytest.raises(SentinelError, match=r"dataset\.yaml") as raised:
        read_source("s", root)
    assert message in str(raised.value)


def test_label_path_replaces_last_images_folder(tmp_path):
    image = tmp_path / "images" / "x" / "images" / "a.b.jpg"
    assert label_path_for(str(image)) == str(tmp_path / "images" / "x" / "labels" / "a.b.txt")
