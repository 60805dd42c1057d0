"""mode=prep: fetch every selected source (cache first) and build one merged, validated YOLO dataset.

Other stages call `prepare_dataset` too; with unchanged inputs it is a cache hit that does no work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from sentinel.config.schema import source_pins
from sentinel.dataset.merge import MergeResult, merge_sources
from sentinel.dataset.report import draw_samples_from_dataset
from sentinel.dataset.sources import fetch_source
from sentinel.dataset.sources.yolo_dir import SourceData
from sentinel.runtime.fingerprint import stable_hash
from sentinel.runtime.runs import claim_run_folder, copy_file_atomic, write_json_atomic
from sentinel.runtime.tracking import active, prep_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepResult:
    dataset_yaml: Path
    folder: Path
    fingerprint: str
    cache_hit: bool


def data_dir_of(cfg: DictConfig) -> Path:
    """`data_dir` as an absolute path (relative to the launch directory; Hydra does not chdir)."""
    return Path(cfg.data_dir).expanduser().resolve()


# One merged dataset per process and dataset config: in mode=all every stage asks for it, and all stages
# of a run must use the dataset the run started with, even if a source changes on disk meanwhile.
_PREPARED: dict[str, MergeResult] = {}
_SOURCES: dict[str, list[SourceData]] = {}


def dataset_key(cfg: DictConfig) -> str:
    """What identifies a merged dataset within this process: the dataset settings and where data lives."""
    dataset_cfg = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("datasets", "merge")}
    return stable_hash({**dataset_cfg, "data_dir": str(data_dir_of(cfg))})


def prepare_dataset(cfg: DictConfig) -> MergeResult:
    """The merged dataset for cfg.datasets/cfg.merge: built, or found in the cache, once per process."""
    data_dir = data_dir_of(cfg)
    key = dataset_key(cfg)
    if key not in _PREPARED:
        sources = [fetch_source(name, source_cfg, data_dir) for name, source_cfg in cfg.datasets.items()]
        _PREPARED[key] = merge_sources(sources, cfg.merge, data_dir)
        _SOURCES[key] = sources
    active().set_tags({"sentinel.dataset": _PREPARED[key].fingerprint})
    return _PREPARED[key]


def source_lineage(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Each source of the prepared dataset: type, what pins its version, its folder, its licence if it names one."""
    prepare_dataset(cfg)
    sources = _SOURCES[dataset_key(cfg)]
    return {
        source.name: {
            "type": cfg.datasets[source.name].type,
            "version": source_pins(cfg.datasets[source.name]),
            "folder": str(source.yaml_path.parent),
            "licence": licence_of(source.yaml_path),
        }
        for source in sources
    }


def licence_of(data_yaml: Path) -> str:
    """The licence a source's data.yaml names (Roboflow exports put it under `roboflow:`), or ''."""
    try:
        data = yaml.safe_load(data_yaml.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return ""
    nested = data.get("roboflow") if isinstance(data.get("roboflow"), dict) else {}
    return str(data.get("license") or data.get("licence") or nested.get("license") or "")


def prep(cfg: DictConfig, run_dir: Path) -> PrepResult:
    """Build the merged dataset and put its report in the run folder."""
    merged = prepare_dataset(cfg)
    claim_run_folder(run_dir, "prep", merged.fingerprint)  # before its report replaces another dataset's
    copy_report(merged.folder / "report", run_dir)
    if cfg.merge.samples_grid > 0 and not (run_dir / "samples.png").is_file():
        # The cached build may have been made with samples_grid=0: draw the grid from the merged dataset.
        draw_samples_from_dataset(merged.folder, cfg.merge.samples_grid, run_dir / "samples.png")
    result = PrepResult(merged.dataset_yaml, merged.folder, merged.fingerprint, merged.cache_hit)
    fields = {k: str(v) if isinstance(v, Path) else v for k, v in result.__dict__.items()}
    write_json_atomic(run_dir / "prep_result.json", {**fields, "key": merged.fingerprint})
    active().log_metrics(prep_metrics(merged.report))
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
