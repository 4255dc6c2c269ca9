"""Replaying a run kept locally (after its tracking server stopped answering) into the store."""

from __future__ import annotations

from pathlib import Path

import mlflow

from rps.tracking.reporter import MlflowReporter
from rps.tracking.runs import reap_stale_runs

RECOVERED_FROM = "rps.recovered_from"  # the new run's tag: the lost run's id


def log_kept_run(folder: Path, record: dict) -> str:
    """Write the kept ``record`` (and the artifacts and model in ``folder``) as a new FINISHED run
    of its experiment, tagged :data:`RECOVERED_FROM`; returns the new run's id."""
    experiment = mlflow.get_experiment_by_name(record["experiment_name"])
    experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment(record["experiment_name"])
    reap_stale_runs([experiment_id])  # the lost run, left RUNNING, among them
    tags = record.get("start_tags", {}) | record["tags"] | {RECOVERED_FROM: record["run_id"]}
    with mlflow.start_run(experiment_id=experiment_id, run_name=record["run_name"], tags=tags) as run:
        report = MlflowReporter(run.info.run_id, training=True)
        report.params(record["params"])
        for epoch in record["epochs"]:
            report.epoch(epoch["metrics"], epoch["step"])
        report.metrics(record["metrics"])
        if (folder / "artifacts").is_dir():
            report.client.log_artifacts(run.info.run_id, str(folder / "artifacts"))
        if record.get("model"):
            model = record["model"]
            report.model(folder / model["saved_model"], model["info"], model["register_as"])
        report.finish()
    return run.info.run_id
