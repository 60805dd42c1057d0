"""mode=compare's report from given runs: best first by the metric, presets named instead of the keys they set,
values and links shown (the runs themselves come from MLflow or run folders: test_tracking.py)."""

from __future__ import annotations

from pathlib import Path

from sentinel.stages.compare import ComparedRun, best_first, compare_html, compare_markdown, plot_metric, shown_keys


def run(name: str, value: float | None, preset: str = "", **params: str) -> ComparedRun:
    metrics = {} if value is None else {"test/map50": value, "val/box_loss": value}
    return ComparedRun(
        name, 0.0, params, metrics, folder=f"/runs/{name}", link=f"http://mlflow/#/{name}", preset=preset
    )


def test_runs_are_best_first_whichever_way_the_metric_goes_and_runs_without_it_last():
    runs = [run("a", 0.2), run("none", None), run("b", 0.5), run("c", 0.0)]
    assert [r.name for r in best_first(runs, "test/map50")] == ["b", "a", "c", "none"]  # higher is better
    assert [r.name for r in best_first(runs, "val/box_loss")] == ["c", "a", "b", "none"]  # a loss: lower


def test_runs_of_different_presets_show_the_preset_for_the_keys_it_sets_unless_every_key_is_asked_for():
    runs = [
        run("demo", 0.1, "demo", **{"search_space.lr0.low": "1e-4", "model.epochs": "40", "seed": "0"}),
        run("default_0", 0.2, "", **{"search_space.lr0.low": "1e-5", "model.epochs": "100", "seed": "0"}),
        run("default_1", 0.3, "", **{"search_space.lr0.low": "1e-5", "model.epochs": "100", "seed": "1"}),
    ]
    differing = ["model.epochs", "search_space.lr0.low", "seed"]
    assert shown_keys(runs, differing, all_keys=False) == ["experiment", "seed"]  # seed varies within a preset
    assert shown_keys(runs, differing, all_keys=True) == differing
    same_preset = [r for r in runs if not r.preset]
    assert shown_keys(same_preset, ["seed"], all_keys=False) == ["seed"]
    report = compare_markdown(best_first(runs, "test/map50"), ["experiment", "seed"], differing, "test/map50")
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    assert rows[1].startswith(
        "| default_1 | 0.3000 | none | 1 | /runs/default_1 | [run page](http://mlflow/#/default_1)"
    )
    assert "stands for 2 of them" in report


def test_the_html_links_each_run_and_draws_a_bar_per_value_and_the_plot_labels_a_zero(tmp_path: Path):
    runs = best_first([run("a", 0.0), run("b", 0.5)], "test/map50")
    page = compare_html(runs, [], "test/map50")
    assert "<a href='http://mlflow/#/b'>b</a>" in page and "<a href='file:///runs/a'>/runs/a</a>" in page
    assert page.count("class='bar'") == 2 and "0.5000" in page and ">0.0000</td>" in page
    plot_metric(runs, "test/map50", tmp_path / "compare.png")
    assert (tmp_path / "compare.png").stat().st_size > 0
