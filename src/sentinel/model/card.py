"""model_card.md/.json: what a model detects, from which data, how it was trained and scored, its known
limits, and the lineage from the source versions to the sha256 of the weights.

Every figure is computed from what the run recorded (prep's report, finetune_args.yaml, metrics.json), never
written by hand. The card is written next to the fine-tuned weights when fine-tuning ends, copied into
every export folder, and rewritten with the test scores when mode=all has evaluated the same weights.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from sentinel.config.schema import SentinelConfig
from sentinel.dataset.prepare import RunDataset
from sentinel.runtime.applied import APPLIED_FILE, read_applied_file
from sentinel.runtime.runs import copy_file_atomic, write_json_atomic, write_text_atomic

CARD = "model_card"
FEW_BOXES = 50  # a class with fewer training boxes than this is listed as a known limit


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def boxes_per_split(report: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Boxes per class and split, summed over sources: {class: {train: n, val: n, test: n}}."""
    counts: dict[str, Counter[str]] = {name: Counter() for name in report["classes"]["names"]}
    for per_split in report.get("boxes", {}).values():
        for split, per_class in per_split.items():
            for name, count in per_class.items():
                counts.setdefault(name, Counter())[split] += count
    return {name: {s: counts[name].get(s, 0) for s in ("train", "val", "test")} for name in counts}


def known_limits(report: dict[str, Any], boxes: dict[str, dict[str, int]]) -> dict[str, Any]:
    totals, duplicates = report.get("totals", {}), report.get("duplicates", {})
    return {
        f"classes_with_fewer_than_{FEW_BOXES}_training_boxes": sorted(
            name for name, split in boxes.items() if split["train"] < FEW_BOXES
        ),
        "skipped_images": totals.get("skipped_images", 0),
        "skipped_label_lines": totals.get("skipped_label_lines", 0),
        "leaks_into_val_test": duplicates.get("leaks_into_val_test", 0),
        "leaks_dropped": duplicates.get("leaks_dropped", False),
        "duplicate_groups": duplicates.get("groups", 0),
    }


def build_card(
    cfg: SentinelConfig, dataset: RunDataset, weights: Path, training: dict[str, Any], metrics: dict[str, Any] | None
) -> dict:
    """The card as data; `training` is finetune_args.yaml, `metrics` metrics.json (None before evaluation)."""
    merged = dataset.merged()
    report, sources = merged.report, dataset.lineage()
    boxes = boxes_per_split(report)
    tune_run = str(Path(training["hparams_from"]).parent) if training.get("hparams_from") else ""
    weights_sha256 = sha256_of(weights)
    return {
        "model": weights.name,
        "detects": [{"class": name, "boxes": split} for name, split in boxes.items()],
        "data": {"fingerprint": merged.fingerprint, "dataset_yaml": str(merged.dataset_yaml), "sources": sources},
        "training": {
            "weights_from": training.get("weights"),
            "epochs": training.get("epochs"),
            "imgsz": cfg.model.imgsz,
            "seed": cfg.seed,
            "device": training.get("device"),
            "hardware": {
                k: getattr(cfg.hardware, k) for k in ("device", "cpu_per_trial", "gpu_per_trial", "ray_address")
            },
            "values_from_tune_run": tune_run,
            "args": training.get("applied") or training.get("args", {}),  # applied, as read back from Ultralytics
        },
        "scores": _scores(metrics),
        "known_limits": known_limits(report, boxes),
        "lineage": [
            *(f"source {name}: {s['type']} {json.dumps(s['version'])}" for name, s in sources.items()),
            f"dataset {merged.fingerprint}",
            f"tune run {tune_run or '(none: default values)'}",
            f"weights sha256 {weights_sha256}",
        ],
        "weights_sha256": weights_sha256,
    }


def _scores(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    return {k: metrics[k] for k in ("split", "note", "classes", "means") if k in metrics}


def card_markdown(card: dict[str, Any]) -> str:
    sections = [
        [f"# Model card: {card['model']}"],
        _detects_section(card),
        _data_section(card),
        _training_section(card["training"]),
        _scores_section(card["scores"]),
        ["## Known limits (computed)", "", *(f"- {k.replace('_', ' ')}: {v}" for k, v in card["known_limits"].items())],
        ["## Lineage", "", *(f"{i + 1}. {step}" for i, step in enumerate(card["lineage"]))],
    ]
    return "\n\n".join("\n".join(section) for section in sections) + "\n"


def _detects_section(card: dict[str, Any]) -> list[str]:
    rows = []
    for row in card["detects"]:
        boxes = row["boxes"]
        rows.append(f"| {row['class']} | {boxes['train']} | {boxes['val']} | {boxes['test']} |")
    return ["## What it detects", "", "| class | train boxes | val | test |", "|---|---|---|---|", *rows]


def _data_section(card: dict[str, Any]) -> list[str]:
    lines = ["## Where the data came from", "", f"Merged dataset `{card['data']['fingerprint']}`:", ""]
    for name, source in card["data"]["sources"].items():
        licence = f"licence {source['licence']}" if source["licence"] else "licence not given by the source"
        lines.append(f"- `{name}`: {source['type']} {json.dumps(source['version'])}, {licence}")
    return lines


def _training_section(training: dict[str, Any]) -> list[str]:
    tune_run = training["values_from_tune_run"] or "none (default values)"
    summary = (
        f"From `{training['weights_from']}`, {training['epochs']} epochs at {training['imgsz']} px, seed "
        f"{training['seed']}, device {training['device']}; tuned values from `{tune_run}`."
    )
    args = yaml.safe_dump(training["args"], sort_keys=False).rstrip()
    applied = "The values Ultralytics applied, read back from its optimizer, schedule, loss and dataset:"
    return ["## How it was trained", "", summary, "", applied, "", "```yaml", args, "```"]


def _scores_section(scores: dict[str, Any] | None) -> list[str]:
    if scores is None:
        return ["## How it scores", "", "Not evaluated in this run: see the evaluate run's metrics.md."]
    note = f" ({scores['note']})" if scores.get("note") else ""
    lines = ["## How it scores", "", f"Split `{scores['split']}`{note}.", ""]
    lines += ["| class | images | instances | P | R | AP50 | AP50-95 |", "|---|---|---|---|---|---|---|"]
    for row in scores["classes"]:
        lines.append(
            f"| {row['class']} | {row['images']} | {row['instances']} | {row['precision']:.4f} | "
            f"{row['recall']:.4f} | {row['ap50']:.4f} | {row['ap50-95']:.4f} |"
        )
    means = scores["means"]
    return [*lines, "", f"mAP50 {means['map50']:.4f}, mAP50-95 {means['map50-95']:.4f}."]


def write_model_card(
    cfg: SentinelConfig,
    dataset: RunDataset,
    folder: Path,
    weights: Path,
    training: dict[str, Any],
    metrics: dict[str, Any] | None = None,
) -> None:
    """model_card.json and .md in `folder` (atomically, like every result file)."""
    card = build_card(cfg, dataset, weights, training, metrics)
    write_json_atomic(folder / f"{CARD}.json", card)
    write_text_atomic(folder / f"{CARD}.md", card_markdown(card))


def copy_model_card(from_folder: Path, to_folder: Path) -> None:
    """The card next to some weights, into an export folder (if those weights have one)."""
    for suffix in (".json", ".md"):
        source = from_folder / f"{CARD}{suffix}"
        if source.is_file():
            copy_file_atomic(source, to_folder / source.name)


def read_training(path: Path) -> dict[str, Any]:
    """finetune_args.yaml, with what Ultralytics applied (applied_args.yaml beside it) under `applied`."""
    training = yaml.safe_load(path.read_text()) if path.is_file() else {}
    applied = read_applied_file(path.parent / APPLIED_FILE)
    if applied:
        training["applied"] = applied
    return training
