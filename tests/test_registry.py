"""The alias `champion`: a registered version takes it when it beats the version holding it on the test score,
and its description says why it did or did not (a real MLflow store, no training)."""

from __future__ import annotations

from pathlib import Path

from sentinel.runtime.tracking.client import CHAMPION, MlflowTracker


def test_a_better_version_takes_the_champion_alias_and_the_description_says_why(tmp_path: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("registry", artifact_location=(tmp_path / "artifacts").as_uri())
    record = tmp_path / "tracking.json"
    record.write_text("{}")
    for score in (0.3, 0.5, 0.4, None):
        run = client.create_run(experiment)
        tags = {} if score is None else {"test.map50-95": score}
        MlflowTracker(client, run.info.run_id, experiment, record, uri).register_model(
            "sentinel", "model", tags, "card"
        )
    assert client.get_model_version_by_alias("sentinel", CHAMPION).version == 2
    described = {int(v.version): v.description for v in client.search_model_versions("name = 'sentinel'")}
    assert described[1].startswith("card") and "Champion: the first version with a test.map50-95" in described[1]
    assert "Champion: test.map50-95 0.5000 beats version 1's 0.3000" in described[2]
    assert "Not the champion: test.map50-95 0.4000 does not beat version 2's 0.5000" in described[3]
    assert "Not the champion: no test.map50-95" in described[4]
