"""Dataset sources: each `type` in the `datasets` group turns its config into a SourceData on local disk.

Downloaded and generated sources live in their own cache folder, data_dir/sources/<name>/<key>, where the
key hashes only the settings that decide the content. A folder is used only when a finished build
renamed it into place (sentinel.runtime.atomic), so an interrupted download is never taken for a complete one.
Library-specific modules (roboflow, coco) are imported only when such a source is selected.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sentinel.config.plain import plain
from sentinel.config.schema import SourceConfig
from sentinel.dataset.sources.yolo_dir import SourceData, read_source
from sentinel.runtime.atomic import atomic_build, is_complete, target_lock
from sentinel.runtime.fingerprint import stable_hash

log = logging.getLogger(__name__)

# Settings that only change how a download runs, not what it yields: not part of the cache key.
OPERATIONAL_KEYS = frozenset({"cache_name", "timeout_s", "retries", "database_uri", "zoo_dir"})


def fetch_source(name: str, cfg: SourceConfig, data_dir: Path) -> SourceData:
    """Make source `name` available locally (cache first) and read its layout."""
    origin = {k: v for k, v in plain(cfg).items() if k != "cache_name"}
    if cfg.type == "yolo":
        return read_source(name, Path(cfg.path).expanduser().resolve(), origin)
    if cfg.type == "demo":
        from sentinel.dataset.sources.demo import generate_demo

        folder = cached_folder(data_dir, name, cfg, lambda tmp, final: generate_demo(cfg, tmp, final))
    elif cfg.type == "roboflow":
        from sentinel.dataset.sources.roboflow import download_roboflow

        folder = cached_folder(data_dir, name, cfg, lambda tmp, final: download_roboflow(cfg, tmp))
    elif cfg.type == "coco":
        from sentinel.dataset.sources.coco import export_coco

        folder = cached_folder(data_dir, name, cfg, lambda tmp, final: export_coco(cfg, tmp, final))
    else:  # validate() rejects unknown types first; this guards direct callers
        raise ValueError(f"unknown source type {cfg.type!r}")
    return read_source(name, folder, origin)


def source_folder(data_dir: Path, name: str, cfg: SourceConfig) -> Path:
    """Where a source's cached copy lives; the last part changes whenever its content settings change."""
    content = {k: v for k, v in plain(cfg).items() if k not in OPERATIONAL_KEYS}
    return data_dir / "sources" / (cfg.cache_name or name) / stable_hash(content, 12)


def cached_folder(data_dir: Path, name: str, cfg: SourceConfig, build: Callable[[Path, Path], None]) -> Path:
    """Return the complete cached folder of a source, building it with `build(tmp, final)` if needed.

    The check comes before any network or SDK call: a cache hit does no work at all.
    """
    final = source_folder(data_dir, name, cfg)
    if is_complete(final):
        log.info("source %s: cached at %s", name, final)
        return final
    with target_lock(final):
        if not is_complete(final):  # another run may have finished it while we waited
            log.info("source %s: building %s", name, final)
            with atomic_build(final, {"source": name, "type": cfg.type}) as tmp:
                build(tmp, final)
    return final
