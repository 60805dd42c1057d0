"""Prep reports class balance, and merge.balance=oversample lists rare classes' images again without copies."""

from __future__ import annotations

import logging
import os

import pytest
from omegaconf import OmegaConf

from builders import jpeg_bytes, make_source, ultralytics_dataset
from sentinel.config.schema import MergeConfig
from sentinel.dataset.balance import repeat_factors
from sentinel.dataset.merge import merge_sources
from sentinel.dataset.sources.yolo_dir import read_source

PERSONS, GUNS = 10, 2  # training images, one box each: 5:1


@pytest.fixture
def source(tmp_path):
    train = {f"p{i}.jpg": (jpeg_bytes(i), "0 0.5 0.5 0.2 0.2\n") for i in range(PERSONS)}
    train |= {f"g{i}.jpg": (jpeg_bytes(100 + i), "1 0.5 0.5 0.3 0.3\n") for i in range(GUNS)}
    train["bg.jpg"] = (jpeg_bytes(200), "")
    val = {"v.jpg": (jpeg_bytes(300), "1 0.5 0.5 0.2 0.2\n")}
    return make_source(tmp_path / "src" / "s", ["person", "gun"], {"train": train, "val": val})


def merge(source, tmp_path, **options):
    cfg = OmegaConf.merge(OmegaConf.structured(MergeConfig), options)
    return merge_sources([read_source("s", source)], cfg, tmp_path / "d")


def test_the_report_counts_boxes_and_images_per_class_and_warns_over_the_threshold(source, tmp_path):
    quiet = merge(source, tmp_path).report["balance"]
    assert quiet["per_class"] == {"gun": {"boxes": 2, "images": 2}, "person": {"boxes": 10, "images": 10}}
    assert quiet["ratio"] == 5.0 and "warning" not in quiet  # under the default 10
    warned = merge(source, tmp_path, balance_warn_ratio=4)
    assert "person has 5.0x the training boxes of gun" in warned.report["balance"]["warning"]
    markdown = (warned.folder / "report" / "prep_report.md").read_text()
    assert "## Class balance (training split)" in markdown and "**Warning:** person has 5.0x" in markdown


def test_oversampling_lists_rare_images_again_up_to_the_target_and_copies_nothing(source, tmp_path, caplog):
    result = merge(source, tmp_path, balance="oversample", balance_target_ratio=1.0)
    over = result.report["balance"]["oversample"]
    assert over["per_class"]["gun"]["boxes"] == 10 and over["ratio"] == 1.0  # each gun image listed 5 times
    listed = (result.folder / "train.txt").read_text().splitlines()
    assert len(listed) == over["listed_images"] == PERSONS + 5 * GUNS + 1
    assert sum(1 for line in listed if os.path.basename(line).startswith("s__g")) == 5 * GUNS
    images = sorted((result.folder / "images" / "train").iterdir())
    assert len(images) == PERSONS + GUNS + 1  # no image copied: each is once on disk, a link to the source
    for image in images:
        assert image.stat().st_ino == (source / "images" / "train" / image.name.split("__", 1)[1]).stat().st_ino
    caplog.set_level(logging.INFO, logger="ultralytics")
    dataset = ultralytics_dataset(result.dataset_yaml, "train")
    assert len(dataset.labels) == len(listed)  # Ultralytics reads the list, repeats included
    assert "New cache created" not in caplog.text  # and the cache prep wrote for it


def test_repeat_factors_take_the_largest_need_of_an_image_and_leave_backgrounds_once():
    images = [[0]] * 12 + [[1]] * 3 + [[0, 1]] + [[]]
    factors = repeat_factors(images, target_ratio=2.0)  # 13 of class 0, 4 of class 1: need ceil(13/8) = 2
    assert factors == [1] * 12 + [2] * 3 + [2] + [1]
