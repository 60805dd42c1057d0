"""What a tune run leaves in its run folder: tune/results.csv (one row per trial), best_hparams.yaml (only
training arguments, ready for fine-tuning), tune_report.md, two plots, and the best trial's weights.

Every trial's values are the ones Ultralytics applied (its applied_args.yaml), not only the ones Ray sampled."""

from __future__ import annotations

import csv
import io
import math
import shutil
from pathlib import Path
from typing import Any

import yaml

from sentinel.config.schema import SentinelConfig
from sentinel.errors import SentinelError
from sentinel.runtime.applied import APPLIED_FILE, read_applied_file
from sentinel.runtime.redaction import redact
from sentinel.runtime.runs import save_figure_atomic, write_text_atomic
from sentinel.runtime.tracking.client import Tracker
from sentinel.runtime.tracking.names import trial_number
from sentinel.stages.tune.result import TuneResult


def trial_rows(grid: Any, cfg: SentinelConfig, trials_in: Path | None = None) -> list[dict[str, Any]]:
    """One row per trial: its parameters, final and best metric, epochs run, how it ended. `trials_in`: the
    local copy of the experiment when Ray's storage is elsewhere (hardware.storage_path)."""
    metric, params = cfg.tune.metric, list(cfg.search_space)
    rows = []
    for result in grid:
        frame = result.metrics_dataframe
        values = [] if frame is None or metric not in frame else [float(v) for v in frame[metric]]
        # Epochs of the attempt that ended the trial: a trial retried after a lost node reports from epoch 1
        # again, and Ray's frame keeps the lost attempt's rows too.
        epochs = int(frame["training_iteration"].iloc[-1]) if values and "training_iteration" in frame else 0
        if result.error is not None:
            ended = "error"
        elif epochs < cfg.tune.epochs:
            ended = "stopped early"
        else:
            ended = "completed"
        best = (max(values) if cfg.tune.mode == "max" else min(values)) if values else math.nan
        path = str(trials_in / Path(result.path).name) if trials_in else result.path
        # What the trial trained with, read back from Ultralytics at its first batch (sentinel.runtime.applied); the
        # sample itself only for a trial that failed before it.
        applied = read_applied_file(Path(path) / APPLIED_FILE)
        row = {"trial": Path(result.path).name, **{p: applied.get(p, result.config.get(p)) for p in params}}
        row.update(
            {
                "final_metric": values[-1] if values else math.nan,
                "best_metric": best,
                "epochs": epochs,
                "ended": ended,
                "path": path,
            }
        )
        row["_values"] = values
        row["_error"] = redact(str(result.error))[:300] if result.error is not None else ""
        rows.append(row)
    return rows


def write_tune_outputs(
    grid: Any,
    cfg: SentinelConfig,
    run_dir: Path,
    tracker: Tracker,
    resumed_from: Path | None,
    trials_in: Path | None = None,
) -> TuneResult:
    rows = trial_rows(grid, cfg, trials_in)
    finished = [r for r in rows if not math.isnan(r["best_metric"])]
    if not finished:
        first = next((r["_error"] for r in rows if r["_error"]), "no trial reported a metric")
        raise SentinelError(f"tune: every trial failed; first error: {first}. Trial logs: {run_dir}")
    best = best_row(grid, rows, cfg.tune.metric, cfg.tune.mode)
    params = list(cfg.search_space)
    best_hparams = {p: _plain(best[p]) for p in params}

    out = run_dir / "tune"
    out.mkdir(parents=True, exist_ok=True)
    columns = ["trial", *params, "final_metric", "best_metric", "epochs", "ended", "path"]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "results.csv", table.getvalue())
    write_text_atomic(run_dir / "best_hparams.yaml", yaml.safe_dump(best_hparams, sort_keys=False))
    weights = keep_best_weights(best, out)
    plot_curves(rows, cfg.tune.metric, out / "metric_per_epoch.png")
    plot_params(finished, params, cfg.tune.metric, out / "metric_vs_params.png")
    write_text_atomic(run_dir / "tune_report.md", report_markdown(rows, best, cfg, weights, resumed_from))
    tracker.log_trials(rows, params, best["trial"])
    tracker.log_metrics({"tune/best_metric": best["best_metric"], "tune/trials": len(rows)})
    return TuneResult(run_dir, best_hparams, float(best["best_metric"]), len(rows), resumed_from)


def best_row(grid: Any, rows: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any]:
    """The row of the trial Ray Tune picks as best: its best epoch over all of each trial's epochs (scope
    "all"), as tune_report.md ranks them, not only each trial's last."""
    best = grid.get_best_result(metric=metric, mode=mode, scope="all", filter_nan_and_inf=True)
    return next(row for row in rows if row["trial"] == Path(best.path).name)


def keep_best_weights(best: dict[str, Any], out: Path) -> Path | None:
    """Copy the best trial's best.pt into tune/best_trial/ (from its checkpoint or its training folder)."""
    source = Path(best["path"]) / "train" / "weights" / "best.pt"
    checkpoints = sorted(Path(best["path"]).glob("checkpoint_*/best.pt"))
    if checkpoints:
        source = checkpoints[-1]
    if not source.is_file():
        return None
    target = out / "best_trial" / "best.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def report_markdown(
    rows: list[dict[str, Any]],
    best: dict[str, Any],
    cfg: SentinelConfig,
    weights: Path | None,
    resumed_from: Path | None,
) -> str:
    metric = cfg.tune.metric
    lines = [
        "# Tune report",
        "",
        f"{len(rows)} trials, {cfg.tune.epochs} epochs at most, metric `{metric}` "
        f"({cfg.tune.mode}), search {cfg.tune.search_alg}, ASHA grace {cfg.tune.grace_period}.",
        "",
    ]
    if resumed_from is not None:
        lines += [f"Resumed the search of {resumed_from}.", ""]
    lines += [f"Best trial: `{best['trial']}` with {metric} = {best['best_metric']:.4f}", ""]
    lines += [f"- {p}: {best[p]}" for p in cfg.search_space]
    lines += [
        "",
        f"Best values: `best_hparams.yaml`; weights: `{weights or 'not kept (no checkpoint)'}`.",
        "",
        "| trial | best | final | epochs | ended |",
        "|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: -r["best_metric"] if cfg.tune.mode == "max" else r["best_metric"]):
        lines.append(
            f"| {row['trial']} | {row['best_metric']:.4f} | {row['final_metric']:.4f} | {row['epochs']} | "
            f"{row['ended']} |"
        )
    errors = [f"- {r['trial']}: {r['_error']}" for r in rows if r["_error"]]
    if errors:
        lines += ["", "## Errors", "", *errors]
    lines += ["", "Plots: `tune/metric_per_epoch.png`, `tune/metric_vs_params.png`.", ""]
    return "\n".join(lines)


def plot_curves(rows: list[dict[str, Any]], metric: str, path: Path) -> None:
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4))
    for number, row in enumerate(rows, start=1):
        if row["_values"]:
            label = f"trial {trial_number(row['trial'], number)}"
            ax.plot(range(1, len(row["_values"]) + 1), row["_values"], marker="o", label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title("Validation metric per epoch, every trial")
    if len(rows) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure_atomic(fig, path)


def plot_params(rows: list[dict[str, Any]], params: list[str], metric: str, path: Path) -> None:
    plt = _pyplot()
    cols = min(4, len(params))
    grid_rows = (len(params) + cols - 1) // cols
    fig, axes = plt.subplots(grid_rows, cols, figsize=(3.2 * cols, 2.6 * grid_rows), squeeze=False)
    for ax, param in zip(axes.flat, params, strict=False):
        values = [r[param] for r in rows]
        if all(isinstance(v, (int, float)) for v in values):
            ax.scatter(values, [r["best_metric"] for r in rows])
        else:
            labels = sorted({str(v) for v in values})
            ax.scatter([labels.index(str(v)) for v in values], [r["best_metric"] for r in rows])
            ax.set_xticks(range(len(labels)), labels)
        ax.set_title(param, fontsize=9)
    for ax in list(axes.flat)[len(params) :]:
        ax.axis("off")
    fig.suptitle(f"best {metric} against each parameter", fontsize=10)
    fig.tight_layout()
    save_figure_atomic(fig, path)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain(value: Any) -> Any:
    """numpy scalars → Python numbers, so best_hparams.yaml is plain YAML."""
    return value.item() if hasattr(value, "item") else value
