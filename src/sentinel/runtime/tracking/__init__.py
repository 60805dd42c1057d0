"""Experiment tracking: one MLflow run per Sentinel run, nested runs for tune trials, weights in the registry.

`tracking=mlflow` (the default) logs to `tracking.uri`, or, when it is empty, to a local SQLite store
`outputs/mlflow.db` with artefacts in `outputs/mlartifacts/` beside it, so nothing needs a server
(`mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db`). `tracking=none` logs nothing.

- Everything goes through `MlflowClient` with an explicit run id, never MLflow's fluent "active run": the
  fluent state is global, and Ultralytics' and Ray's integrations read and end it behind our back.
- Ultralytics' own MLflow callback is switched off (sentinel.runtime.ultra.sentinel_trainer): it calls
  `mlflow.autolog()` for the whole process, renames the experiment after `trainer.args.project` (our run
  folder) and logs the weights folder a second time. Per-epoch metrics are logged here instead.
- A server that does not answer is a start-up error naming `tracking.uri`, before any download or
  training. Later, a failed logging call is a warning and tracking stops for the run: an hour of
  training is never lost to a tracking server that went away (the run folder has every result).
- The run's id is kept in the run folder (tracking.json), so rerunning in the same folder continues the
  same MLflow run; a run whose process died (SIGKILL, power cut) is marked KILLED by the next start.
- The MLflow work runs in a tracking service, a process of its own (client.ServiceTracker, service.py):
  train.py sends it each call and goes on; at the end it waits for a service that is ready, and leaves one
  still starting (a short command) a journal to finish from after train.py has exited (pending.py).
"""
