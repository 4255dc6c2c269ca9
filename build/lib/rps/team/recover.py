"""Log a run whose tracking server stopped answering, once the server is back.

    python -m rps.recover mlruns/unsent/<folder>
    python -m rps.recover mlruns/unsent/<folder> --tracking-uri http://mlflow.example.org

A run that loses its server keeps everything it produced in such a folder (``record.json``:
params, tags, per-epoch and final metrics; ``artifacts/``; ``model/saved_model``) and prints its
path. This command writes all of it as a new FINISHED run of the same experiment (nested under
the same parent run, if any), tagged ``rps.recovered_from=<the lost run's id>``, with the same
MLflow model, then deletes the folder. The lost run itself, left RUNNING on the server, is marked
FAILED by the next rps command that opens the experiment (its process is gone).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rps.common.errors import ResourceError


def recover(folder: Path, tracking_uri: str | None = None, mlruns_dir: str = "mlruns") -> str:
    """Log the kept run in ``folder``; returns the new run's id."""
    import mlflow

    from rps import tracking
    from rps.tracking.reporter import RECORD_FILE
    from rps.tracking.store import check_tracking_server

    try:
        record = json.loads((folder / RECORD_FILE).read_text())
    except (OSError, ValueError) as err:
        raise ResourceError(f"{folder} is not a folder kept by a run that lost its server (no readable {RECORD_FILE}): {err}") from err
    uri = tracking.use_store(tracking_uri, mlruns_dir)
    check_tracking_server(uri)
    experiment = mlflow.get_experiment_by_name(record["experiment_name"])
    experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment(record["experiment_name"])
    tracking.reap_stale_runs([experiment_id])  # the lost run, left RUNNING, among them
    tags = record.get("start_tags", {}) | record["tags"] | {"rps.recovered_from": record["run_id"]}
    with mlflow.start_run(experiment_id=experiment_id, run_name=record["run_name"], tags=tags) as run:
        report = tracking.MlflowReporter(run.info.run_id)
        report.params(record["params"])
        for epoch in record["epochs"]:
            report.epoch(epoch["metrics"], epoch["step"])
        report.metrics(record["metrics"])
        if (folder / "artifacts").is_dir():
            report.client.log_artifacts(run.info.run_id, str(folder / "artifacts"))
        if record.get("model"):
            model = record["model"]
            report.model(folder / model["saved_model"], model["info"], model["register_as"])
    shutil.rmtree(folder)
    return run.info.run_id
