"""Replaying a run kept locally (after its tracking server stopped answering) into the store.

An attempt the server cut short leaves a half-written run tagged ``rps.recovered_from``: the next
attempt deletes it (and the model it may have logged or registered) before it writes its own, so
running rps.recover again never duplicates a run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import mlflow

from rps.inference.manifest import check_files
from rps.tracking.record import EPOCHS_ASKED, EPOCHS_DONE, epoch_tags
from rps.tracking.reporter import MlflowReporter, unreachable
from rps.tracking.runs import reap_stale_runs

log = logging.getLogger(__name__)
RECOVERED_FROM = "rps.recovered_from"  # the new run's tag: the lost run's id


def check_kept_model(folder: Path, record: dict) -> None:
    """The kept model's files against the SHA-256s the run recorded when it kept them."""
    model = record.get("model")
    if not model:
        return
    if "files" not in model:  # kept by an rps that did not record them: the folder is the user's own
        log.warning("%s records no SHA-256 of its model's files (kept by an older rps): logging it unchecked.", folder)
        return
    check_files(model["files"], folder / model["saved_model"], f"The kept model {folder / model['saved_model']}")


def _experiment_id(name: str) -> str:
    experiment = mlflow.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else mlflow.create_experiment(name)


def delete_earlier_attempts(experiment_id: str, lost_run_id: str) -> list[str]:
    """Delete the runs an earlier recovery of ``lost_run_id`` left (with their logged models and
    registered versions); returns their ids."""
    client = mlflow.MlflowClient()
    earlier = client.search_runs([experiment_id], f"tags.`{RECOVERED_FROM}` = '{lost_run_id}'", max_results=1000)
    for run in earlier:
        run_id = run.info.run_id
        for version in client.search_model_versions(f"run_id = '{run_id}'"):
            client.delete_model_version(version.name, version.version)
        for model in client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'"):
            client.delete_logged_model(model.model_id)
        client.delete_run(run_id)
        log.warning("Deleted run %s, left half-written by an earlier recovery of run %s", run_id, lost_run_id)
    return [run.info.run_id for run in earlier]


def _epochs_of(record: dict) -> dict[str, str]:
    """The epoch tags of a record kept by an rps that did not write them: asked from its params."""
    tags = record.get("start_tags", {}) | record["tags"]
    if EPOCHS_DONE in tags:
        return {}
    params = record["params"]
    fine_tune = int(params.get("backbone.fine_tune_epochs", 0)) if str(params.get("backbone.trainable")).lower() == "true" else 0
    asked = int(tags.get(EPOCHS_ASKED) or int(params["epochs"]) + fine_tune)
    done = int(record["metrics"].get("epochs_trained", len(record["epochs"])))
    return epoch_tags(asked, done, stopped=True)


def _replay(run_id: str, folder: Path, record: dict) -> None:
    report = MlflowReporter(run_id, training=True, go_offline=False)  # a lost server raises: nothing may be skipped
    report.params(record["params"])
    for epoch in record["epochs"]:
        report.epoch(epoch["metrics"], epoch["step"])
    report.metrics(record["metrics"])
    if (folder / "artifacts").is_dir():
        report.client.log_artifacts(run_id, str(folder / "artifacts"))
    if record.get("model"):
        model = record["model"]
        report.model(folder / model["saved_model"], model["info"], model["register_as"])
    report.finish()


def log_kept_run(folder: Path, record: dict) -> str:
    """Write the kept ``record`` (and the artifacts and model in ``folder``) as a new FINISHED run
    of its experiment, tagged :data:`RECOVERED_FROM`, replacing what an earlier attempt left;
    returns the new run's id. If the server stops answering meanwhile, the error propagates and
    the half-written run is left for the next attempt to replace."""
    experiment_id = _experiment_id(record["experiment_name"])
    reap_stale_runs([experiment_id])  # the lost run, left RUNNING, among them
    delete_earlier_attempts(experiment_id, record["run_id"])
    tags = record.get("start_tags", {}) | record["tags"] | _epochs_of(record) | {RECOVERED_FROM: record["run_id"]}
    run = mlflow.start_run(experiment_id=experiment_id, run_name=record["run_name"], tags=tags)
    try:
        _replay(run.info.run_id, folder, record)
    except BaseException as err:
        lost = unreachable(err)
        if lost:  # one quick attempt to close the run, not MLflow's retry budget
            os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
        try:
            mlflow.end_run("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        except Exception:  # the server is gone: the run stays RUNNING until the next attempt replaces it
            pass
        raise
    mlflow.end_run("FINISHED")
    return run.info.run_id
