"""mode=evaluate: validate the fine-tuned weights on the test split (val when there is none, and the report
says so) and write the per-class table and the means as metrics.json and metrics.md, with Ultralytics'
confusion matrix and PR curve next to them. `evaluate.compare_to` adds a column of differences."""

from __future__ import annotations

import json
import logging
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentinel.config.schema import SentinelConfig
from sentinel.dataset.prepare import RunDataset, data_dir_of
from sentinel.dataset.sources.yolo_dir import class_names_of
from sentinel.model.scoring import choose_split, tracked_metrics, val_args
from sentinel.model.weights import resolve_weights, weights_key
from sentinel.runtime.fingerprint import stable_hash
from sentinel.runtime.runs import (
    claim_run_folder,
    copy_file_atomic,
    link_or_copy,
    lookup_result,
    read_json,
    record_result,
    resolve_result,
    write_text_atomic,
)
from sentinel.runtime.tracking.client import Tracker
from sentinel.runtime.ultra import check_device, load_yolo, provide_offline_font

log = logging.getLogger(__name__)

MEANS = ("mp", "mr", "map50-95", "map50", "map75")
PLOTS = ("confusion_matrix.png", "confusion_matrix_normalized.png", "BoxPR_curve.png", "BoxF1_curve.png")


@dataclass(frozen=True)
class EvaluateResult:
    metrics: dict[str, Any]
    metrics_file: Path
    skipped: bool = False


def evaluate(
    cfg: SentinelConfig,
    run_dir: Path,
    dataset: RunDataset,
    tracker: Tracker,
    weights: Path | None = None,
    skip_if_done: bool = False,
) -> EvaluateResult:
    check_device(cfg.hardware.device)
    merged = dataset.merged()
    data_dir = data_dir_of(cfg)
    weights = weights or resolve_weights(
        cfg.evaluate.weights, "evaluate.weights", data_dir, merged.fingerprint, class_names_of(merged.dataset_yaml)
    )
    split, note = choose_split(merged.dataset_yaml, cfg.evaluate.split)
    key = stable_hash({**weights_key(weights), "dataset": merged.fingerprint, "split": split, "imgsz": cfg.model.imgsz})
    if skip_if_done and (done := lookup_result("evaluate", key, data_dir, needed=("metrics_json",))):
        for name in ("metrics.json", "metrics.md"):
            link_or_copy(Path(done["run_dir"]) / name, run_dir / name)
        log.info("evaluate: skipped, done in %s", done["run_dir"])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        tracker.log_metrics(tracked_metrics(metrics))
        return EvaluateResult(metrics, run_dir / "metrics.json", True)
    claim_run_folder(run_dir, "evaluate", key)

    provide_offline_font()
    results = load_yolo(weights).val(
        **val_args(cfg.model, cfg.hardware, merged.dataset_yaml, split, run_dir / "evaluate", plots=True)
    )
    metrics = metrics_table(results, split, note, str(weights))
    if cfg.evaluate.compare_to:
        add_comparison(metrics, cfg.evaluate.compare_to, data_dir, merged.fingerprint)
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    write_text_atomic(run_dir / "metrics.md", metrics_markdown(metrics))
    for name in PLOTS:
        if (Path(results.save_dir) / name).is_file():
            copy_file_atomic(Path(results.save_dir) / name, run_dir / name)
    print(metrics_markdown(metrics))
    tracker.log_metrics(tracked_metrics(metrics))
    record_result(
        "evaluate",
        key,
        run_dir,
        data_dir,
        {"metrics_json": str(run_dir / "metrics.json"), "dataset": merged.fingerprint, "weights": str(weights)},
    )
    return EvaluateResult(metrics, run_dir / "metrics.json")


# Ultralytics' per-class table (DetMetrics.summary, one row a class) under Sentinel's column names.
SUMMARY_COLUMNS = {
    "Images": "images",
    "Instances": "instances",
    "Box-P": "precision",
    "Box-R": "recall",
    "Box-F1": "f1",
    "mAP50": "ap50",
    "mAP75": "ap75",
    "mAP50-95": "ap50-95",
}


def metrics_table(results: Any, split: str, note: str, weights: str) -> dict[str, Any]:
    """Per-class rows (Ultralytics' own summary) and means from its DetMetrics, as plain numbers for JSON."""
    classes = [
        {"class": row["Class"], **{ours: _number(row[theirs]) for theirs, ours in SUMMARY_COLUMNS.items()}}
        for row in results.summary(decimals=12)  # as measured, not rounded for display
    ]
    box = results.box
    means = {
        "mp": float(box.mp),
        "mr": float(box.mr),
        "map50-95": float(box.map),
        "map50": float(box.map50),
        "map75": float(box.map75),
    }
    return {"split": split, "note": note, "weights": weights, "classes": classes, "means": means}


def _number(value: Any) -> int | float:
    """numpy's integers are not JSON; counts stay integers."""
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def add_comparison(metrics: dict[str, Any], compare_to: str, data_dir: Path, dataset: str) -> None:
    """Differences against an earlier evaluation (`latest`: the newest on this dataset), per class and in the means."""
    entry = resolve_result(compare_to, "evaluate", "evaluate.compare_to", data_dir, match={"dataset": dataset})
    earlier = read_json(Path(entry["metrics_json"]), "metrics.json")
    metrics["compared_to"] = earlier.get("weights", "")
    metrics["means_diff"] = {k: metrics["means"][k] - earlier["means"].get(k, 0.0) for k in MEANS}
    before = {row["class"]: row for row in earlier["classes"]}
    for row in metrics["classes"]:
        old = before.get(row["class"])
        row["ap50-95_diff"] = row["ap50-95"] - old["ap50-95"] if old else None


def metrics_markdown(metrics: dict[str, Any]) -> str:
    diff = "means_diff" in metrics
    lines = [f"# Evaluation on {metrics['split']}", ""]
    if metrics["note"]:
        lines += [f"Note: {metrics['note']}.", ""]
    header = "| class | images | instances | P | R | F1 | AP50 | AP50-95 |" + (" Δ AP50-95 |" if diff else "")
    lines += [header, "|---" * (8 + diff) + "|"]
    for row in metrics["classes"]:
        cells = [
            row["class"],
            row["images"],
            row["instances"],
            *(f"{row[k]:.4f}" for k in ("precision", "recall", "f1", "ap50", "ap50-95")),
        ]
        if diff:
            cells.append("" if row.get("ap50-95_diff") is None else f"{row['ap50-95_diff']:+.4f}")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        "| mP | mR | mAP50-95 | mAP50 | mAP75 |",
        "|---|---|---|---|---|",
        "| " + " | ".join(f"{metrics['means'][k]:.4f}" for k in MEANS) + " |",
    ]
    if diff:
        lines += ["| " + " | ".join(f"{metrics['means_diff'][k]:+.4f}" for k in MEANS) + " | (vs earlier) |"]
    lines += ["", PR_NOTE]
    return "\n".join(lines) + "\n"


# Why a class can read P 1.0000, R 0.0000 here while errors.md (mode=inspect) leaves its precision blank.
PR_NOTE = (
    "P and R are Ultralytics' own, at the confidence that gives the best mean F1. A class the model never "
    "predicts has no precision to measure: Ultralytics then reports P 1.0000 (or 0.0000) with R 0.0000 by its "
    "convention, while `errors.md` from `mode=inspect` leaves the cell blank."
)
