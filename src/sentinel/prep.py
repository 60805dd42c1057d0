"""mode=prep: fetch every selected source (cache first) and build one merged, validated YOLO dataset.

Other stages call `prepare_dataset` too; with unchanged inputs it is a cache hit that does no work.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sentinel.fingerprint import stable_hash
from sentinel.merge import MergeResult, merge_sources
from sentinel.sources import fetch_source

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


def prepare_dataset(cfg: DictConfig) -> MergeResult:
    """The merged dataset for cfg.datasets/cfg.merge: built, or found in the cache, once per process."""
    data_dir = data_dir_of(cfg)
    dataset_cfg = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("datasets", "merge")}
    key = stable_hash({**dataset_cfg, "data_dir": str(data_dir)})
    if key not in _PREPARED:
        sources = [fetch_source(name, source_cfg, data_dir) for name, source_cfg in cfg.datasets.items()]
        _PREPARED[key] = merge_sources(sources, cfg.merge, data_dir)
    return _PREPARED[key]


def prep(cfg: DictConfig, run_dir: Path) -> PrepResult:
    """Build the merged dataset and put its report in the run folder."""
    merged = prepare_dataset(cfg)
    copy_report(merged.folder / "report", run_dir)
    result = PrepResult(merged.dataset_yaml, merged.folder, merged.fingerprint, merged.cache_hit)
    (run_dir / "prep_result.json").write_text(
        json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in result.__dict__.items()}, indent=2)
    )
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
        shutil.copyfile(path, run_dir / path.name)
