"""COCO-2017 source: load through the FiftyOne zoo, export each split in YOLO format.

- `classes` is an OR: a sample is loaded when it contains ANY listed class. Only the listed classes are
  exported as boxes; any other object in those images stays unlabelled (a false negative for a model
  that later learns that class from another source). `only_matching` is passed to FiftyOne's importer so
  that the database holds only the listed classes' labels too.
- COCO's own test split has no labels, so the zoo's `validation` split is divided, seeded, into val and
  test (as the original notebook did); `train` stays train.
- Every split's export receives the same ordered class list, otherwise each split would number classes by
  what it happens to contain (fiftyone#1952).
- MongoDB: with `database_uri` set, it is pinged (short timeout) before FiftyOne is imported, and FiftyOne
  uses it; otherwise FiftyOne starts its own mongod. Either way a failure is one message with the fix.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import yaml

from sentinel.config.schema import CocoSource
from sentinel.errors import SentinelError
from sentinel.runtime.fiftyone_db import import_fiftyone

log = logging.getLogger(__name__)

ZOO_NAME = "coco-2017"
ZOO_TO_YOLO_SPLIT = {"train": "train", "validation": "val"}


def export_coco(cfg: CocoSource, out: Path, final: Path) -> None:
    """Load COCO-2017 through the zoo and write a YOLO dataset into `out` (renamed to `final` later)."""
    unknown = [s for s in cfg.splits if s not in ZOO_TO_YOLO_SPLIT]
    if unknown:
        raise SentinelError(
            f"coco: splits {unknown} cannot be used (COCO-2017's test split has no labels). Fix: use "
            f"{sorted(ZOO_TO_YOLO_SPLIT)}"
        )
    fo = import_fiftyone(cfg.database_uri)
    import fiftyone.utils.random as four
    import fiftyone.zoo as foz
    from fiftyone import ViewField

    if cfg.zoo_dir:
        fo.config.dataset_zoo_dir = str(Path(cfg.zoo_dir).expanduser().resolve())
    classes = list(cfg.classes)
    name = f"sentinel-{ZOO_NAME}-{uuid.uuid4().hex[:8]}"
    log.info(
        "coco: loading %s splits %s, classes %s, max_samples %s", ZOO_NAME, list(cfg.splits), classes, cfg.max_samples
    )
    try:
        dataset = foz.load_zoo_dataset(
            ZOO_NAME,
            splits=list(cfg.splits),
            label_types=["detections"],
            classes=classes,
            max_samples=cfg.max_samples,
            only_matching=cfg.only_matching,
            dataset_name=name,
            persistent=False,
        )
    except Exception as error:  # the zoo's download stack raises many types (requests, urllib, OSError, ...)
        log.debug("coco: the FiftyOne zoo failed", exc_info=True)
        first = str(error).splitlines()[0][:200] if str(error) else ""
        raise SentinelError(
            f"coco: the FiftyOne zoo could not load {ZOO_NAME} into {fo.config.dataset_zoo_dir} "
            f"({type(error).__name__}: {first}). Fix: run with network access once (the download is cached), "
            "or set datasets.coco.zoo_dir to a folder that already holds coco-2017"
        ) from None
    try:
        views = _yolo_split_views(dataset, cfg, four)
        for split, view in views.items():
            labelled = view.filter_labels("ground_truth", ViewField("label").is_in(classes), only_matches=False)
            labelled.export(
                export_dir=str(out),
                dataset_type=fo.types.YOLOv5Dataset,
                label_field="ground_truth",
                split=split,
                classes=classes,
            )
            log.info("coco: exported %d %s images", len(view), split)
    finally:
        dataset.delete()
    _point_yaml_at(out / "dataset.yaml", final)


def _yolo_split_views(dataset: Any, cfg: CocoSource, four: Any) -> dict[str, Any]:
    """train → train; validation → val and (a seeded `test_fraction` of it) test."""
    views = {}
    if "train" in cfg.splits:
        views["train"] = dataset.match_tags("train")
    if "validation" in cfg.splits:
        validation = dataset.match_tags("validation")
        if cfg.test_fraction > 0:
            val, test = four.random_split(validation, [1 - cfg.test_fraction, cfg.test_fraction], seed=cfg.seed)
            views["val"], views["test"] = val, test
        else:
            views["val"] = validation
    return views


def _point_yaml_at(path: Path, final: Path) -> None:
    """FiftyOne writes the absolute export folder (our temporary one) as `path`; record the final one."""
    data = yaml.safe_load(path.read_text())
    data["path"] = str(final)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
