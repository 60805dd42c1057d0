"""mode=prep: fetch every selected source (cache first) and build one merged, validated YOLO dataset.

Every stage of a run works on the run's `RunDataset`, which the pipeline makes and hands to each stage: built
(or found in the cache) on first use, then the same for every stage, even if a source changes on disk meanwhile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sentinel.config.schema import MergeConfig, SentinelConfig, SourceConfig, source_pins
from sentinel.dataset.merge import MergeResult, merge_sources
from sentinel.dataset.report import draw_samples_from_dataset
from sentinel.dataset.sources import fetch_source
from sentinel.dataset.sources.yolo_dir import SourceData
from sentinel.runtime.runs import claim_run_folder, copy_file_atomic, write_json_atomic
from sentinel.runtime.tracking.client import Tracker
from sentinel.runtime.tracking.names import prep_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepResult:
    dataset_yaml: Path
    folder: Path
    fingerprint: str
    cache_hit: bool


def data_dir_of(cfg: SentinelConfig) -> Path:
    """`data_dir` as an absolute path (relative to the launch directory; Hydra does not chdir)."""
    return Path(cfg.data_dir).expanduser().resolve()


class RunDataset:
    """The merged dataset of one run's `datasets` and `merge` settings: built, or found in the cache, when a stage
    first asks (a config error found before that costs no build), then the same for every later stage.

    The pipeline makes one per run and hands it to the stages that need data; nothing is kept at module level,
    so two configs can run in one process.
    """

    def __init__(self, datasets: dict[str, SourceConfig], merge: MergeConfig, data_dir: Path, tracker: Tracker) -> None:
        self.datasets = datasets
        self.merge = merge
        self.data_dir = data_dir
        self.tracker = tracker
        self._merged: MergeResult | None = None
        self._sources: list[SourceData] = []

    def merged(self) -> MergeResult:
        if self._merged is None:
            self._sources = [fetch_source(n, source, self.data_dir) for n, source in self.datasets.items()]
            self._merged = merge_sources(self._sources, self.merge, self.data_dir)
            self.tracker.set_tags({"sentinel.dataset": self._merged.fingerprint})
        return self._merged

    def lineage(self) -> dict[str, dict[str, Any]]:
        """Each source: type, what pins its version, its folder, its licence if it names one."""
        self.merged()
        return {
            source.name: {
                "type": self.datasets[source.name].type,
                "version": source_pins(self.datasets[source.name]),
                "folder": str(source.yaml_path.parent),
                "licence": licence_of(source.yaml_path),
            }
            for source in self._sources
        }


def licence_of(data_yaml: Path) -> str:
    """The licence a source's data.yaml names (Roboflow exports put it under `roboflow:`), or ''."""
    try:
        data = yaml.safe_load(data_yaml.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return ""
    nested = data.get("roboflow") if isinstance(data.get("roboflow"), dict) else {}
    return str(data.get("license") or data.get("licence") or nested.get("license") or "")


def prep(merge: MergeConfig, run_dir: Path, dataset: RunDataset) -> PrepResult:
    """Build the merged dataset and put its report in the run folder."""
    merged = dataset.merged()
    claim_run_folder(run_dir, "prep", merged.fingerprint)  # before its report replaces another dataset's
    copy_report(merged.folder / "report", run_dir)
    if merge.samples_grid > 0 and not (run_dir / "samples.png").is_file():
        # The cached build may have been made with samples_grid=0: draw the grid from the merged dataset.
        draw_samples_from_dataset(merged.folder, merge.samples_grid, run_dir / "samples.png")
    result = PrepResult(merged.dataset_yaml, merged.folder, merged.fingerprint, merged.cache_hit)
    fields = {k: str(v) if isinstance(v, Path) else v for k, v in result.__dict__.items()}
    write_json_atomic(run_dir / "prep_result.json", {**fields, "key": merged.fingerprint})
    dataset.tracker.log_metrics(prep_metrics(merged.report))
    totals = merged.report.get("totals", {})
    log.info(
        "prep: %s%s — %s images kept of %s, %s boxes, %s classes %s; report in %s",
        merged.dataset_yaml,
        " (cache hit)" if merged.cache_hit else "",
        totals.get("kept"),
        totals.get("inputs"),
        totals.get("boxes"),
        len(merged.report.get("classes", {}).get("names", [])),
        merged.report.get("classes", {}).get("names", []),
        run_dir / "prep_report.md",
    )
    return result


def copy_report(report_dir: Path, run_dir: Path) -> None:
    for path in sorted(report_dir.glob("*")):
        copy_file_atomic(path, run_dir / path.name)
