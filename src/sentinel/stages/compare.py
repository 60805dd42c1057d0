"""mode=compare: a report over earlier runs — the chosen metric per run, next to the config keys that differ.

Runs come from the tracking store (tracking=mlflow: the finished top-level runs of every experiment, or of
`compare.experiment`) or, with
tracking=none, from the run folders under the launch folder's outputs/ and multirun/ (their
config_resolved.yaml, prep_report.json and metrics.json). Select by `compare.experiment`, by
`compare.sweep` (a multirun folder) and the newest `compare.runs`. Metric names are the tracking names
(`test/map50-95`, `prep/boxes`, `tune/best_metric`, ...), the same whichever the source.

Writes compare.md, compare.html and compare.png into the run folder.
"""

from __future__ import annotations

import difflib
import html
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from sentinel.config.schema import SentinelConfig
from sentinel.errors import ConfigError, SentinelError
from sentinel.runtime.redaction import redact
from sentinel.runtime.runs import read_json, run_finished, save_figure_atomic, write_text_atomic
from sentinel.runtime.tracking.names import flatten, prep_metrics
from sentinel.runtime.tracking.store import (
    ARTIFACTS_DIR,
    check_local_store,
    local_store_dir,
    local_store_lock,
    tracking_uri,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ComparedRun:
    name: str  # what the report calls it: the run folder relative to the launch folder, or the MLflow run name
    started: float  # seconds since the epoch, to order runs newest first
    params: dict[str, str]  # the resolved config with dotted keys
    metrics: dict[str, float]
    folder: str = ""  # the run folder
    link: str = ""  # the run's page in the MLflow UI
    preset: str = ""  # the `experiment` preset it ran with ("" = none)


@dataclass(frozen=True)
class CompareResult:
    runs: list[ComparedRun]
    differing: list[str]
    report: Path


def compare(cfg: SentinelConfig, run_dir: Path, launch_dir: Path) -> CompareResult:
    check_sweep(cfg.compare.sweep)
    if cfg.tracking.backend == "mlflow":
        runs, where = runs_from_store(cfg, launch_dir)
    else:
        runs, where = runs_from_folders(cfg, launch_dir)
    runs = runs[: cfg.compare.runs]
    if not runs:
        raise SentinelError(
            f"compare: no finished run in {where}. Fix: run a stage first (e.g. make demo), or widen compare.sweep"
        )
    metric = cfg.compare.metric
    if not any(metric in r.metrics for r in runs):
        known = sorted({k for r in runs for k in r.metrics})
        close = difflib.get_close_matches(metric, known, n=1)
        if close:
            hint = f"did you mean {close[0]}?"
        elif known:
            hint = "use one of " + ", ".join(k for k in known if k.count("/") < 2)
        else:
            hint = f"the {len(runs)} newest finished run(s) in {where} recorded no metric; run prep or evaluate first"
        raise ConfigError("compare.metric", f"no selected run has {metric!r}", hint)
    differing = differing_keys(runs)
    runs = best_first(runs, metric)
    columns = shown_keys(runs, differing, cfg.compare.all_keys)
    write_text_atomic(run_dir / "compare.md", compare_markdown(runs, columns, differing, metric))
    write_text_atomic(run_dir / "compare.html", compare_html(runs, columns, metric))
    plot_metric(runs, metric, run_dir / "compare.png")
    log.info("compare: %d runs; %d config keys differ (%s); %s", len(runs), len(differing), ", ".join(columns), run_dir)
    return CompareResult(runs, differing, run_dir / "compare.md")


# --- where runs come from -------------------------------------------------------------------------------


def check_sweep(sweep: str) -> None:
    """compare.sweep, when given, is a multirun folder that exists and a path MLflow's filter can quote."""
    if not sweep.strip():
        return
    folder = Path(sweep).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError("compare.sweep", f"{folder} is not a folder", "give a sweep folder: multirun/<date>/<time>")
    if "'" in str(folder) and '"' in str(folder):
        raise ConfigError("compare.sweep", f"{folder} holds both kinds of quote", "rename the folder")


def quoted(value: str) -> str:
    """A string value for MLflow's search filter: single quotes, or double where the value has a single one."""
    return f'"{value}"' if "'" in value else f"'{value}'"


def runs_from_store(cfg: SentinelConfig, launch_dir: Path) -> tuple[list[ComparedRun], str]:
    """Finished top-level runs (no trial runs, no compare runs), newest first, and where they were looked for.

    `compare.experiment` names one MLflow experiment; empty reads every experiment in the store, since each
    `experiment=` preset records to an experiment of its own name (tracking.experiment_name): a plain
    `mode=compare` after `make demo` must find the demo's runs.
    """
    from mlflow.tracking import MlflowClient

    from sentinel.runtime.tracking.service import settle_pending_runs

    store_dir = local_store_dir(launch_dir, cfg.paths.tracking)
    uri = tracking_uri(cfg.tracking.uri, store_dir)
    settle_pending_runs(store_dir, cfg.tracking.timeout_s)  # short runs recorded after their train.py ended
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return [], f"{uri} (no store yet)"  # opening it would create it, racing this run's own tracking
    check_local_store(uri)
    name = cfg.compare.experiment.strip()
    # This run's tracking service may be creating the store's tables, and MLflow's client opens (and migrates)
    # the store when it is made, not at its first call: both under the lock.
    with local_store_lock(uri, cfg.tracking.timeout_s):
        client = MlflowClient(tracking_uri=uri)
        every = client.search_experiments()
    experiments = [e for e in every if e.name == name] if name else every
    if name and not experiments:
        names = ", ".join(e.name for e in every) or "none"
        raise ConfigError("compare.experiment", f"no experiment {name!r} in {redact(uri)}", f"use one of: {names}")
    where = f"{redact(uri)}, experiment {name!r}" if name else f"{redact(uri)}, every experiment"
    query = "attributes.status = 'FINISHED' and tags.`sentinel.mode` != 'compare'"
    if cfg.compare.sweep.strip():
        sweep = Path(cfg.compare.sweep).expanduser().resolve()
        query += f" and tags.`sentinel.sweep_dir` = {quoted(str(sweep))}"
        where += f", sweep {sweep}"
    if not experiments:
        return [], where
    names = {e.experiment_id: e.name for e in experiments}
    found = client.search_runs(
        list(names), filter_string=query, order_by=["attributes.start_time DESC"], max_results=500
    )
    prefix = (lambda run: "") if name else (lambda run: f"{names[run.info.experiment_id]}: ")
    runs = [
        ComparedRun(
            prefix(run) + (run.info.run_name or run.info.run_id),
            run.info.start_time / 1000,
            run.data.params,
            run.data.metrics,
            folder=run.data.tags.get("sentinel.run_dir", ""),
            link=run_page(cfg.tracking.uri, run.info.experiment_id, run.info.run_id),
            preset=run.data.tags.get("sentinel.preset", ""),
        )
        for run in found
    ]
    return runs, where


def runs_from_folders(cfg: SentinelConfig, launch_dir: Path) -> tuple[list[ComparedRun], str]:
    """Run folders (those with config_resolved.yaml) under paths.runs and paths.sweeps (outputs/ and multirun/),
    or the sweep folder."""
    sweep = cfg.compare.sweep.strip()
    roots = (
        [Path(sweep).expanduser().resolve()]
        if sweep
        else [launch_dir / Path(root).expanduser() for root in (cfg.paths.runs, cfg.paths.sweeps)]
    )
    where = " and ".join(str(root) for root in roots)
    runs = []
    # Run folders logged as artefacts into the local store are copies, not runs.
    store_copies = (local_store_dir(launch_dir, cfg.paths.tracking) / ARTIFACTS_DIR).resolve()
    for config_file in (f for root in roots if root.is_dir() for f in root.rglob("config_resolved.yaml")):
        folder = config_file.parent
        if folder.resolve().is_relative_to(store_copies):
            continue
        config = yaml.safe_load(config_file.read_text()) or {}
        if config.get("mode") == "compare" or not (folder / "train.log").is_file() or not run_finished(folder):
            continue
        name = str(folder.relative_to(launch_dir)) if folder.is_relative_to(launch_dir) else str(folder)
        runs.append(
            ComparedRun(
                name,
                config_file.stat().st_mtime,
                flatten(config),
                folder_metrics(folder),
                folder=str(folder),
                preset=folder_preset(folder),
            )
        )
    return sorted(runs, key=lambda r: r.started, reverse=True), where


def folder_preset(folder: Path) -> str:
    """The `experiment` preset a run folder's run used, from Hydra's record of its choices."""
    try:
        hydra = yaml.safe_load((folder / ".hydra" / "hydra.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return ""
    return str(((hydra.get("hydra") or {}).get("runtime") or {}).get("choices", {}).get("experiment") or "")


def run_page(uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI: the tracking server's, or `mlflow ui`'s default address for a local store."""
    base = uri.strip().rstrip("/") if uri.strip().startswith(("http://", "https://")) else LOCAL_UI
    return f"{redact(base)}/#/experiments/{experiment_id}/runs/{run_id}"


LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui --backend-store-uri sqlite:///...` serves by default


def folder_metrics(folder: Path) -> dict[str, float]:
    """The tracking metrics a run folder records: prep counts, test table, best tune metric."""
    from sentinel.model.scoring import tracked_metrics

    metrics: dict[str, float] = {}
    if (folder / "prep_report.json").is_file():
        metrics.update(prep_metrics(read_json(folder / "prep_report.json", "prep report")))
    if (folder / "metrics.json").is_file():
        metrics.update(tracked_metrics(read_json(folder / "metrics.json", "metrics.json")))
    if (folder / "tune_result.json").is_file():
        best = read_json(folder / "tune_result.json", "tune result").get("best_metric")
        if isinstance(best, (int, float)):
            metrics["tune/best_metric"] = float(best)
    return metrics


# --- the report -----------------------------------------------------------------------------------------


def differing_keys(runs: list[ComparedRun]) -> list[str]:
    """Config keys whose value is not the same in every run (a key a run lacks counts as different)."""
    keys = sorted({k for r in runs for k in r.params})
    return [k for k in keys if len({r.params.get(k) for r in runs}) > 1]


def lower_is_better(metric: str) -> bool:
    """Losses go down; every other tracked metric (mAP, recall, counts) is read as higher is better."""
    return "loss" in metric.rsplit("/", 1)[-1]


def metric_value(run: ComparedRun, metric: str) -> float | None:
    value = run.metrics.get(metric)
    return None if value is None or math.isnan(value) else float(value)


def best_first(runs: list[ComparedRun], metric: str) -> list[ComparedRun]:
    """Runs by the metric, best first; runs without it last, newest first."""
    scored = [r for r in runs if metric_value(r, metric) is not None]
    ordered = sorted(scored, key=lambda r: metric_value(r, metric) or 0.0, reverse=not lower_is_better(metric))
    return ordered + [r for r in runs if r not in scored]


def shown_keys(runs: list[ComparedRun], differing: list[str], all_keys: bool) -> list[str]:
    """The differing keys as columns. When the runs' presets differ, the preset's name stands for every key
    that only changes with the preset (the same in all runs of one preset): a search space, the epochs."""
    if all_keys or len({r.preset for r in runs}) < 2:
        return differing
    return ["experiment", *(k for k in differing if not set_by_preset(runs, k))]


def set_by_preset(runs: list[ComparedRun], key: str) -> bool:
    values: dict[str, set[str | None]] = {}
    for run in runs:
        values.setdefault(run.preset, set()).add(run.params.get(key))
    return all(len(seen) == 1 for seen in values.values())


def cell(run: ComparedRun, key: str) -> str:
    if key == "experiment":
        return run.preset or "none"
    return run.params.get(key, "—")


def _value(run: ComparedRun, metric: str) -> str:
    value = metric_value(run, metric)
    if value is None:
        return "—"
    counted = metric.startswith("prep/")  # prep's counts are whole; every other metric reads as a score
    return str(int(value)) if counted and value.is_integer() else f"{value:.4f}"


def direction(metric: str) -> str:
    return "lower is better" if lower_is_better(metric) else "higher is better"


def compare_markdown(runs: list[ComparedRun], columns: list[str], differing: list[str], metric: str) -> str:
    links = any(r.link for r in runs)
    header = ["run", metric, *columns, "run folder", *(["MLflow"] if links else [])]
    summarised = [k for k in differing if k not in columns]
    lines = [
        f"# Compare: {len(runs)} runs by {metric}, best first ({direction(metric)})",
        "",
        f"Config keys that differ between these runs: {', '.join(f'`{k}`' for k in differing) or 'none'}.",
        *(
            [f"The `experiment` column stands for {len(summarised)} of them (compare.all_keys=true lists each)."]
            if summarised
            else []
        ),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for run in runs:
        cells = [run.name, _value(run, metric), *(cell(run, k) for k in columns), run.folder or "—"]
        cells += [f"[run page]({run.link})" if run.link else "—"] if links else []
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n\n![metric per run](compare.png)\n"


def compare_html(runs: list[ComparedRun], columns: list[str], metric: str) -> str:
    """A table to open in a browser: best first, each value with a bar to scale, links to the run's folder
    and its MLflow page."""
    values = [v for r in runs if (v := metric_value(r, metric)) is not None]
    top = max((abs(v) for v in values), default=0.0) or 1.0

    def link(href: str, text: str) -> str:
        return f"<a href='{html.escape(href)}'>{html.escape(text)}</a>" if href else html.escape(text)

    def bar(run: ComparedRun) -> str:
        value = metric_value(run, metric)
        width = 0.0 if value is None else 100 * abs(value) / top
        shown = html.escape(_value(run, metric))
        return f"<td class='value'><span class='bar' style='width:{width:.1f}px'></span>{shown}</td>"

    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["run", metric, *columns, "run folder"])
    rows = [
        "<tr>"
        + f"<td>{link(r.link, r.name)}</td>"
        + bar(r)
        + "".join(f"<td>{html.escape(cell(r, k))}</td>" for k in columns)
        + f"<td>{link(Path(r.folder).as_uri() if r.folder.startswith('/') else '', r.folder or '—')}</td>"
        + "</tr>"
        for r in runs
    ]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Sentinel compare</title><style>"
        "body{font-family:sans-serif;margin:24px}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:4px 8px;text-align:left}th{background:#eee}"
        ".value{white-space:nowrap;font-variant-numeric:tabular-nums}"
        ".bar{display:inline-block;height:10px;min-width:2px;margin-right:6px;background:#4477aa}"
        "</style></head><body>"
        f"<h1>{len(runs)} runs by {html.escape(metric)}</h1><p>Best first ({direction(metric)}). Run names open "
        "the run in MLflow (for a local store, with <code>mlflow ui</code> running).</p>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table>"
        "<p><img src='compare.png' alt='metric per run'></p></body></html>\n"
    )


def plot_metric(runs: list[ComparedRun], metric: str, path: Path) -> None:
    """Horizontal bars, best at the top, each with its value (a 0 shows as its label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in runs if metric_value(r, metric) is not None]
    values = [metric_value(r, metric) or 0.0 for r in shown]
    fig, ax = plt.subplots(figsize=(8.0, max(2.5, 0.45 * len(shown) + 1.5)))
    bars = ax.barh(range(len(shown)), values, color="#4477aa")
    ax.bar_label(bars, labels=[_value(r, metric) for r in shown], padding=3, fontsize=8)
    ax.set_yticks(range(len(shown)), [r.name for r in shown], fontsize=8)
    ax.invert_yaxis()  # the best at the top
    low, high = min([*values, 0.0]), max([*values, 0.0])
    span = (high - low) or 1.0
    ax.set_xlim(low - (0.05 * span if low < 0 else 0), high + 0.2 * span)  # room for the labels
    ax.set_xlabel(f"{metric} ({direction(metric)})")
    ax.set_title(f"{metric} per run, best first")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
