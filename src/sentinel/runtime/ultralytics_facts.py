"""What a tune driver checks a search against, without importing Ultralytics in the driver.

A search is checked before Ray starts: its parameters must be Ultralytics training arguments (fractions within
[0, 1]) and `tune.metric` a metric Ultralytics reports. Those are three constants of the installed
Ultralytics, but importing any part of it imports torch (ultralytics/__init__.py imports ultralytics.utils,
which imports torch): 2 s of a tune driver that needs torch for nothing else, since its trials train in
Ray workers. So the constants are read with the real import once per installed Ultralytics, and kept in
`data_dir/records/` under a key made of Ultralytics' version and the stat of the files they come from (found
without importing the package): an upgrade, or an edited source in an editable install, reads them again.
A record that cannot be read is read again from Ultralytics; it is only ever a shortcut.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from sentinel.runtime.runs import write_json_atomic

log = logging.getLogger(__name__)

RECORD_NAME = "ultralytics-facts.json"
SOURCES = ("cfg/__init__.py", "cfg/default.yaml", "utils/metrics.py")  # where the three constants are defined


@dataclass(frozen=True)
class UltralyticsFacts:
    arguments: frozenset[str]  # training argument names (ultralytics.cfg.DEFAULT_CFG_DICT)
    fractions: frozenset[str]  # those that must lie in [0, 1] (ultralytics.cfg.CFG_FRACTION_KEYS)
    metrics: tuple[str, ...]  # validation metrics a detection training reports each epoch (DetMetrics.keys)


def ultralytics_facts(data_dir: Path) -> UltralyticsFacts:
    """The installed Ultralytics' training arguments, fraction arguments and metric names."""
    record = data_dir / "records" / RECORD_NAME
    key = installed_key()
    kept = _read_record(record)
    if key is not None and kept.get("key") == key and (facts := _facts_of(kept)) is not None:
        return facts
    facts = read_from_ultralytics()
    if key is not None:
        plain = {"arguments": sorted(facts.arguments), "fractions": sorted(facts.fractions), "metrics": facts.metrics}
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(record, {"key": key, "facts": plain})
        except OSError as error:  # a shortcut only: the next search reads Ultralytics again
            log.warning("tune: could not keep Ultralytics' argument names in %s (%s)", record, error)
    return facts


def read_from_ultralytics() -> UltralyticsFacts:
    """The constants from Ultralytics itself (imports it, and torch)."""
    from ultralytics.cfg import CFG_FRACTION_KEYS, DEFAULT_CFG_DICT
    from ultralytics.utils.metrics import DetMetrics

    return UltralyticsFacts(frozenset(DEFAULT_CFG_DICT), frozenset(CFG_FRACTION_KEYS), tuple(DetMetrics().keys))


def installed_key() -> list[object] | None:
    """Ultralytics' version, where it is, and (size, mtime_ns) of each source file; None if it cannot be found."""
    try:
        spec = importlib.util.find_spec("ultralytics")  # a top-level package: found, not imported
        version = importlib.metadata.version("ultralytics")
    except (ImportError, ValueError, importlib.metadata.PackageNotFoundError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    try:
        stats = [os.stat(package / name) for name in SOURCES]
    except OSError:
        return None
    return [version, str(package), *[[st.st_size, st.st_mtime_ns] for st in stats]]


def _facts_of(kept: dict) -> UltralyticsFacts | None:
    try:
        facts = kept["facts"]
        return UltralyticsFacts(frozenset(facts["arguments"]), frozenset(facts["fractions"]), tuple(facts["metrics"]))
    except (KeyError, TypeError):
        return None


def _read_record(record: Path) -> dict:
    try:
        data = json.loads(record.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        log.warning("tune: ignoring %s (%s); reading Ultralytics' argument names again", record, error)
        return {}
    return data if isinstance(data, dict) else {}
