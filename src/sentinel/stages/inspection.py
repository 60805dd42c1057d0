"""mode=inspect: which images the detector misses boxes on or invents them on, in FiftyOne and on paper.

For a threat detector one missed gun matters more than a point of mAP, and a per-class table cannot show
which gun. This stage runs the weights over the evaluation split exactly as mode=evaluate does (the same
Ultralytics validator, so the same letterbox, NMS and boxes), keeps the boxes at or above the confidence at
which evaluate reports P and R (the maximum of the mean F1 curve), and loads them with the ground truth into
a FiftyOne dataset. FiftyOne's detection evaluation marks every box a true positive, false positive or false
negative at IoU `inspect.iou`; a second, class-agnostic pass finds the confusions (a gun found as a knife).

Written into the run folder: errors.json and errors.md (per class, the confusions, the images with the most
misses and false alarms), missed.png and false_alarms.png (the worst images, ground truth in green and
predictions in magenta). `inspect.app=true` then serves the FiftyOne App on that dataset until Ctrl-C.

The FiftyOne dataset is named after the run folder; it is deleted when the stage ends unless
`inspect.persistent`, so repeated runs do not fill the database, and a stale one of the same name is
deleted first, never merged into.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentinel.config.schema import InspectConfig, SentinelConfig
from sentinel.dataset.prepare import RunDataset, data_dir_of
from sentinel.dataset.report import LABEL_PX, draw_label, tile_sheet
from sentinel.dataset.sources.yolo_dir import class_names_of
from sentinel.errors import SentinelError
from sentinel.model.scoring import choose_split, val_args
from sentinel.model.weights import resolve_weights, weights_key
from sentinel.runtime.fiftyone_db import import_fiftyone
from sentinel.runtime.fingerprint import stable_hash
from sentinel.runtime.runs import claim_run_folder, record_result, write_atomic, write_text_atomic
from sentinel.runtime.tracking.client import Tracker
from sentinel.runtime.ultra import check_device, load_yolo, provide_offline_font

log = logging.getLogger(__name__)

TRUTH, PREDICTED = (40, 200, 60), (230, 40, 200)  # gallery colours: ground truth green, predictions magenta
CONF_RULE = "the confidence at which mode=evaluate reports P and R (maximum of the mean F1 curve)"


@dataclass
class Predicted:
    """One image as the validator saw it: boxes in pixels of the original image (x1, y1, x2, y2)."""

    height: int
    width: int
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)


@dataclass
class ValPass:
    """What Ultralytics' validator gave: every image's predictions, its threshold and per-class recall."""

    images: dict[str, Predicted]
    conf: float
    recall: dict[str, float]


def inspect(cfg: SentinelConfig, run_dir: Path, dataset: RunDataset, tracker: Tracker) -> dict[str, Any]:
    check_device(cfg.hardware.device)
    merged = dataset.merged()
    names = class_names_of(merged.dataset_yaml)
    weights = resolve_weights(cfg.evaluate.weights, "evaluate.weights", data_dir_of(cfg), merged.fingerprint, names)
    split, note = choose_split(merged.dataset_yaml, cfg.evaluate.split)
    if not has_images(merged.folder, split):
        raise SentinelError(
            f"inspect: the {split} split of {merged.folder} has no images. Fix: choose another with "
            "evaluate.split=val (or train)"
        )
    settings = {"split": split, "imgsz": cfg.model.imgsz, "iou": cfg.inspect.iou}
    key = stable_hash({**weights_key(weights), "dataset": merged.fingerprint, **settings})
    claim_run_folder(run_dir, "inspect", key)
    fo = import_fiftyone(cfg.inspect.database_uri, "inspect.database_uri")  # fail before the model runs
    seen = validate_and_record(cfg, weights, merged.dataset_yaml, split, run_dir)
    name = dataset_name(run_dir)
    dataset = load_into_fiftyone(fo, name, seen, names, cfg.inspect.persistent)
    try:
        errors = find_errors(dataset, names, cfg.inspect.iou, cfg.inspect.worst)
        errors.update(split=split, note=note, weights=str(weights), conf=seen.conf, conf_rule=CONF_RULE)
        errors.update(fiftyone_dataset=name, persistent=bool(cfg.inspect.persistent), evaluate_recall=seen.recall)
        write_text_atomic(run_dir / "errors.json", json.dumps(errors, indent=2))
        write_text_atomic(run_dir / "errors.md", errors_markdown(errors))
        draw_gallery(dataset, "eval_fn", cfg.inspect.gallery, "missed boxes", run_dir / "missed.png")
        draw_gallery(dataset, "eval_fp", cfg.inspect.gallery, "false alarms", run_dir / "false_alarms.png")
        print(errors_markdown(errors))
        tracker.log_metrics(tracked_errors(errors))
        record_result("inspect", key, run_dir, data_dir_of(cfg), {"errors_json": str(run_dir / "errors.json")})
        if cfg.inspect.app:
            serve_app(fo, dataset, cfg.inspect)
    finally:
        if not cfg.inspect.persistent:
            dataset.delete()
    return errors


def has_images(folder: Path, split: str) -> bool:
    images = folder / "images" / split
    if not images.is_dir():
        return False
    with os.scandir(images) as entries:
        return any(entry.is_file() for entry in entries)


def dataset_name(run_dir: Path) -> str:
    """`sentinel-inspect-<date>-<time>[-<job>]-<hash of the full path>`: one per run folder."""
    resolved = run_dir.resolve()
    parts = [p for p in resolved.parts[-3:] if p not in ("outputs", "multirun", "/")]
    digest = hashlib.blake2b(str(resolved).encode(), digest_size=4).hexdigest()
    return "sentinel-inspect-" + "-".join([*parts, digest])


# --- predictions, as mode=evaluate makes them -------------------------------------------------------------


def validate_and_record(cfg: SentinelConfig, weights: Path, dataset_yaml: Path, split: str, run_dir: Path) -> ValPass:
    """Run Ultralytics' validator as mode=evaluate does, keeping every image's predictions on the way."""
    from ultralytics.utils.metrics import smooth

    seen: dict[str, Predicted] = {}
    provide_offline_font()
    args = val_args(cfg.model, cfg.hardware, dataset_yaml, split, run_dir / "inspect", plots=False)
    results = load_yolo(weights).val(validator=recording_validator(seen), **args)
    with contextlib.suppress(OSError):  # with plots off the validator leaves its folder empty
        Path(results.save_dir).rmdir()
    box = results.box
    f1 = box.f1_curve
    # ultralytics.utils.metrics.ap_per_class: P and R are read at this index of the 1000-point confidence grid
    conf = float(box.px[smooth(f1.mean(0), 0.1).argmax()]) if len(f1) and f1.any() else 1.0
    recall = {results.names[int(c)]: float(box.r[i]) for i, c in enumerate(results.ap_class_index)}
    for image in seen.values():
        kept = [i for i, c in enumerate(image.confidences) if c >= conf]
        image.boxes = [image.boxes[i] for i in kept]
        image.confidences = [image.confidences[i] for i in kept]
        image.classes = [image.classes[i] for i in kept]
    log.info("inspect: %d images, boxes at confidence >= %.3f (%s)", len(seen), conf, CONF_RULE)
    return ValPass(seen, conf, recall)


def recording_validator(seen: dict[str, Predicted]) -> type:
    """Ultralytics' DetectionValidator, also keeping each image's boxes scaled back to the original image.

    It calls the validator's own `_prepare_batch` and `scale_preds` (ultralytics 8.4.190), as its JSON export
    does; tests/test_inspect.py compares the result with mode=evaluate, so a change there fails a test.
    """
    from ultralytics.models.yolo.detect import DetectionValidator

    class RecordingValidator(DetectionValidator):
        def update_metrics(self, preds: list[dict[str, Any]], batch: dict[str, Any]) -> None:
            super().update_metrics(preds, batch)
            for si, pred in enumerate(preds):
                pbatch = self._prepare_batch(si, batch)
                scaled = self.scale_preds(pred, pbatch)
                height, width = (int(v) for v in pbatch["ori_shape"])
                seen[pbatch["im_file"]] = Predicted(
                    height,
                    width,
                    [tuple(b) for b in scaled["bboxes"].cpu().tolist()],
                    pred["conf"].cpu().tolist(),
                    [int(c) for c in pred["cls"].cpu().tolist()],
                )

    return RecordingValidator


# --- FiftyOne ---------------------------------------------------------------------------------------------


def load_into_fiftyone(fo: Any, name: str, seen: ValPass, names: list[str], persistent: bool) -> Any:
    """A FiftyOne dataset of the split: `ground_truth` from the merged labels, `predictions` from the pass."""
    if fo.dataset_exists(name):
        log.info("inspect: replacing the earlier FiftyOne dataset %s", name)
        fo.delete_dataset(name)
    dataset = fo.Dataset(name, persistent=persistent)
    dataset.default_classes = list(names)
    samples = []
    for im_file, image in sorted(seen.images.items()):
        sample = fo.Sample(filepath=im_file)
        sample["ground_truth"] = fo.Detections(detections=ground_truth(fo, label_file_of(im_file), names))
        sample["predictions"] = fo.Detections(detections=predictions(fo, image, names))
        samples.append(sample)
    dataset.add_samples(samples, progress=False)
    return dataset


def label_file_of(im_file: str) -> Path:
    """The merged dataset's label for an image (Ultralytics' images/ → labels/ rule)."""
    head, _, tail = im_file.rpartition(f"{os.sep}images{os.sep}")
    return Path(head, "labels", tail).with_suffix(".txt")


def ground_truth(fo: Any, label: Path, names: list[str]) -> list[Any]:
    boxes = []
    for line in label.read_text().splitlines() if label.is_file() else []:
        c, x, y, w, h = line.split()
        bbox = [float(x) - float(w) / 2, float(y) - float(h) / 2, float(w), float(h)]
        boxes.append(fo.Detection(label=names[int(c)], bounding_box=bbox))
    return boxes


def predictions(fo: Any, image: Predicted, names: list[str]) -> list[Any]:
    boxes = []
    for (x1, y1, x2, y2), conf, c in zip(image.boxes, image.confidences, image.classes, strict=True):
        bbox = [x1 / image.width, y1 / image.height, (x2 - x1) / image.width, (y2 - y1) / image.height]
        boxes.append(fo.Detection(label=names[c], bounding_box=bbox, confidence=conf))
    return boxes


def find_errors(dataset: Any, names: list[str], iou: float, worst: int) -> dict[str, Any]:
    """FiftyOne's COCO-style matching, read from its own results: per class TP/FN/FP from the class-wise
    evaluation's confusion matrix (its last row and column hold the unmatched boxes), the cross-class confusions
    from the class-agnostic one's, and per image FiftyOne's eval_fn/eval_fp counts."""
    common = {"pred_field": "predictions", "gt_field": "ground_truth", "iou": iou, "progress": False}
    fiftyone_log = logging.getLogger("fiftyone")
    level = fiftyone_log.level
    fiftyone_log.setLevel(logging.WARNING)  # its "Evaluating detections..." twice per pass, on the console too
    try:
        classwise = dataset.evaluate_detections(eval_key="eval", classwise=True, **common)
        cross = dataset.evaluate_detections(eval_key="cross", classwise=False, **common)
    finally:
        fiftyone_log.setLevel(level)
    matched = classwise.confusion_matrix(classes=names, include_missing=True)
    unmatched = len(names)
    counts = {
        name: {
            "instances": int(matched[i, i] + matched[i, unmatched]),
            "true_positives": int(matched[i, i]),
            "false_negatives": int(matched[i, unmatched]),
            "false_positives": int(matched[unmatched, i]),
        }
        for i, name in enumerate(names)
    }
    across = cross.confusion_matrix(classes=names)
    confusions = {
        (actual, predicted): int(across[a, p])
        for a, actual in enumerate(names)
        for p, predicted in enumerate(names)
        if a != p and across[a, p]
    }
    paths, fns, fps, labels, evals = dataset.values(
        ["filepath", "eval_fn", "eval_fp", "ground_truth.detections.label", "ground_truth.detections.eval"]
    )
    per_image = [
        {
            "image": path,
            "false_negatives": fn,
            "false_positives": fp,
            "missed": sorted(b for b, ended in zip(box_labels or [], box_evals or [], strict=True) if ended == "fn"),
        }
        for path, fn, fp, box_labels, box_evals in zip(paths, fns, fps, labels, evals, strict=True)
    ]
    classes = []
    for name, c in counts.items():
        found, predicted = c["true_positives"], c["true_positives"] + c["false_positives"]
        confused_as = {p: n for (a, p), n in sorted(confusions.items()) if a == name}
        classes.append(
            {
                "class": name,
                **c,
                "recall": found / c["instances"] if c["instances"] else None,
                "precision": found / predicted if predicted else None,
                "confused_as": confused_as,
            }
        )
    return {
        "iou": iou,
        "images": len(per_image),
        "classes": classes,
        "confusions": [{"actual": a, "predicted": p, "count": n} for (a, p), n in sorted(confusions.items())],
        "most_missed": _worst(per_image, "false_negatives", worst),
        "most_false_alarms": _worst(per_image, "false_positives", worst),
    }


def _worst(per_image: list[dict[str, Any]], key: str, count: int) -> list[dict[str, Any]]:
    ranked = sorted((i for i in per_image if i[key]), key=lambda i: (-i[key], i["image"]))
    return ranked[:count]


def tracked_errors(errors: dict[str, Any]) -> dict[str, float]:
    """`test/gun/false_negatives` and the like, beside mode=evaluate's metrics."""
    split, flat = errors["split"], {}
    for row in errors["classes"]:
        for k in ("false_negatives", "false_positives", "true_positives"):
            flat[f"{split}/{row['class']}/{k}"] = float(row[k])
    return flat


def errors_markdown(errors: dict[str, Any]) -> str:
    def cell(value: float | None) -> str:
        return "" if value is None else f"{value:.3f}"

    lines = [
        f"# Where the detector fails on {errors['split']}",
        "",
        f"Weights `{errors['weights']}`; {errors['images']} images; boxes at confidence >= {errors['conf']:.3f} "
        f"({errors['conf_rule']}); matched at IoU {errors['iou']:g}.",
        "",
        "| class | instances | found | missed (FN) | false alarms (FP) | recall | precision | recall (evaluate) |"
        " confused as |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if errors.get("note"):
        lines[3:3] = [f"Note: {errors['note']}.", ""]
    for row in errors["classes"]:
        confused = ", ".join(f"{p} ×{n}" for p, n in row["confused_as"].items())
        lines.append(
            f"| {row['class']} | {row['instances']} | {row['true_positives']} | {row['false_negatives']} | "
            f"{row['false_positives']} | {cell(row['recall'])} | {cell(row['precision'])} | "
            f"{cell(errors['evaluate_recall'].get(row['class']))} | {confused} |"
        )
    lines += ["", "## Most missed boxes", ""]
    lines += [f"- `{r['image']}`: {r['false_negatives']} ({', '.join(r['missed'])})" for r in errors["most_missed"]]
    lines += [] if errors["most_missed"] else ["None: the model found every box."]
    lines += ["", "## Most false alarms", ""]
    lines += [f"- `{r['image']}`: {r['false_positives']}" for r in errors["most_false_alarms"]]
    lines += [] if errors["most_false_alarms"] else ["None: every prediction matched a box."]
    kept = "kept" if errors["persistent"] else "deleted after the run"
    lines += ["", f"FiftyOne dataset: `{errors['fiftyone_dataset']}` ({kept})."]
    return "\n".join(lines) + "\n"


# --- galleries --------------------------------------------------------------------------------------------


def draw_gallery(dataset: Any, count_field: str, count: int, what: str, path: Path, tile: int = 256) -> None:
    """The `count` images with the most `count_field`, ground truth green and predictions magenta.

    FiftyOne ranks them in its database (a view: match, compound sort, limit), so only those are loaded.
    """
    from fiftyone import ViewField as F
    from PIL import Image, ImageDraw

    worst = dataset.match(F(count_field) > 0).sort_by([(count_field, -1), ("filepath", 1)])
    tiles = []
    for sample in worst.limit(count).iter_samples() if count > 0 else ():  # inspect.gallery=0: no tiles
        with Image.open(sample.filepath) as img:
            img = img.convert("RGB").resize((tile, tile))
        draw = ImageDraw.Draw(img)
        for field_name, colour in (("ground_truth", TRUTH), ("predictions", PREDICTED)):
            for d in sample[field_name].detections:
                x, y, w, h = (v * tile for v in d.bounding_box)
                draw.rectangle((x, y, x + w, y + h), outline=colour, width=3 if field_name == "ground_truth" else 2)
                text = d.label if d.confidence is None else f"{d.label} {d.confidence:.2f}"
                text += {"fn": " missed", "fp": " false"}.get(d.eval, "")
                draw_label(draw, (x + 2, y + 2), text, colour)
        count = sample[count_field]
        counted = {"missed boxes": "missed box", "false alarms": "false alarm"}.get(what, what) if count == 1 else what
        caption = f"{count} {counted} · {Path(sample.filepath).name}"  # the count first: a long name is cut
        draw_label(draw, (4, tile - LABEL_PX - 6), caption, (255, 255, 255))
        tiles.append(img)
    legend = f"{what.capitalize()}, worst image first. Ground truth: green; predictions: magenta."
    if not tiles:
        legend = f"No {what} on this split."
    sheet = tile_sheet(tiles, tile, legend)
    write_atomic(path, lambda tmp: sheet.save(tmp, format="PNG"))


# --- the App ----------------------------------------------------------------------------------------------


def serve_app(fo: Any, dataset: Any, settings: InspectConfig) -> None:
    """The FiftyOne App on the dataset in remote mode, until Ctrl-C (or SIGTERM).

    Both signals only set an event, from before the App starts: the App answers HTTP before launch_app
    returns, so a Ctrl-C then must end the wait, not raise KeyboardInterrupt inside FiftyOne's start-up.
    """
    stop = threading.Event()
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in stops}
    try:
        session = fo.launch_app(dataset, remote=True, address=settings.address, port=settings.port)
        try:
            url = f"http://{settings.address}:{settings.port}/"
            print(f"inspect: the FiftyOne App serves {dataset.name} at {url} — Ctrl-C to stop", flush=True)
            log.info("inspect: FiftyOne App at %s", url)
            while not stop.wait(0.5):
                pass
        finally:
            session.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("inspect: the App stopped", flush=True)
