"""The facts a tune driver checks a search against: Ultralytics' own, read without importing it after the first time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sentinel.runtime.ultralytics_facts import RECORD_NAME, read_from_ultralytics, ultralytics_facts

# In a fresh process: the facts, and whether getting them imported Ultralytics or torch.
FACTS_IN_A_FRESH_PROCESS = """
import json, sys
from pathlib import Path
from sentinel.runtime.ultralytics_facts import ultralytics_facts
facts = ultralytics_facts(Path(sys.argv[1]))
imported = "torch" in sys.modules or "ultralytics" in sys.modules
print("SEEN=" + json.dumps({"arguments": sorted(facts.arguments), "fractions": sorted(facts.fractions),
                            "metrics": list(facts.metrics), "imported": imported}))
"""


def facts_in_a_fresh_process(data_dir: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", FACTS_IN_A_FRESH_PROCESS, str(data_dir)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.split("SEEN=")[-1])


def test_facts_are_ultralytics_own_and_a_second_run_imports_neither_ultralytics_nor_torch(tmp_path: Path):
    real = read_from_ultralytics()
    first, second = facts_in_a_fresh_process(tmp_path), facts_in_a_fresh_process(tmp_path)

    for seen in (first, second):
        assert set(seen["arguments"]) == real.arguments and "lr0" in seen["arguments"]
        assert set(seen["fractions"]) == real.fractions and "fliplr" in seen["fractions"]
        assert tuple(seen["metrics"]) == real.metrics and "metrics/mAP50-95(B)" in seen["metrics"]
    assert first["imported"]  # read from Ultralytics itself the first time
    assert not second["imported"]  # then from the record: no torch in the driver


def test_a_record_of_another_ultralytics_or_a_damaged_one_is_read_again(tmp_path: Path):
    record = tmp_path / "records" / RECORD_NAME
    ultralytics_facts(tmp_path)
    kept = json.loads(record.read_text())
    kept["key"][0] = "0.0.1"  # another version
    kept["facts"]["arguments"] = ["only_this"]
    record.write_text(json.dumps(kept))
    assert "lr0" in ultralytics_facts(tmp_path).arguments
    assert json.loads(record.read_text())["key"][0] != "0.0.1"  # rewritten for the installed one

    record.write_text("{not json")
    assert "lr0" in ultralytics_facts(tmp_path).arguments
    assert json.loads(record.read_text())["facts"]["metrics"] == list(read_from_ultralytics().metrics)


def test_facts_still_come_when_the_record_cannot_be_written(tmp_path: Path):
    (tmp_path / "records").write_text("a file where the records folder would be")
    assert "lr0" in ultralytics_facts(tmp_path).arguments
