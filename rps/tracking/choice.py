"""What a sweep or study writes about its choice: the chosen child marked (its run, its logged
model, its registered version's alias), and the artifacts the parent reads back from its children.

Only the chosen child carries :data:`CHOSEN_TAG` (a study that chooses again as it grows moves
the mark); with ``register_model=<name>`` every child registered a version of ``<name>``, and the
chosen one gets the alias ``best-<sweep>``, so ``models:/<name>@best-<sweep>`` loads it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional

import mlflow

from rps.tracking.reporter import MODEL_URI_TAG

log = logging.getLogger(__name__)
CHOSEN_TAG = "rps.chosen_by"  # on the chosen child and its logged model: the id of the sweep's parent run


def alias_for(sweep: str) -> str:
    """``best-<sweep>`` as a registry alias allows it (letters, digits, _ and -)."""
    return "best-" + (re.sub(r"[^\w-]+", "-", sweep).strip("-") or "sweep")


def _model_id(run) -> Optional[str]:
    uri = run.data.tags.get(MODEL_URI_TAG, "")
    return uri.rsplit("/", 1)[-1] if uri.startswith("models:/") else None


def _unmark(client: mlflow.MlflowClient, run) -> None:
    client.delete_tag(run.info.run_id, CHOSEN_TAG)
    model_id = _model_id(run)
    if model_id:
        try:
            client.delete_logged_model_tag(model_id, CHOSEN_TAG)
        except mlflow.exceptions.MlflowException:  # the model was deleted meanwhile
            pass


def _alias_version(client: mlflow.MlflowClient, run, alias: str) -> Optional[str]:
    """Alias the chosen run's registered version, if it registered one; returns ``<name>@<alias>``."""
    versions = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    if not versions:
        return None
    version = max(versions, key=lambda v: int(v.version))
    client.set_registered_model_alias(version.name, alias, version.version)
    return f"{version.name}@{alias}"


def mark_chosen(parent_id: str, children: list, chosen_id: str, sweep: str) -> Optional[str]:
    """Mark ``chosen_id`` (one of ``children``) as the sweep's choice, unmark the others; returns
    the registered model reference (``<name>@best-<sweep>``) when the chosen run registered one."""
    client = mlflow.MlflowClient()
    for run in children:
        if run.info.run_id != chosen_id and run.data.tags.get(CHOSEN_TAG) == parent_id:
            _unmark(client, run)
    chosen = client.get_run(chosen_id)
    client.set_tag(chosen_id, CHOSEN_TAG, parent_id)
    model_id = _model_id(chosen)
    if model_id is None:
        return None
    client.set_logged_model_tags(model_id, {CHOSEN_TAG: parent_id})
    return _alias_version(client, chosen, alias_for(sweep))


def download(run_id: str, path: str, into: Path) -> Optional[Path]:
    """A run's artifact ``path`` downloaded into ``into``; None when the run has no such artifact."""
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(into)))
    except (mlflow.exceptions.MlflowException, OSError) as err:
        log.debug("run %s has no %s: %s", run_id, path, err)
        return None


REFIT_RUN_TAG = "refit_run_id"  # on a sweep's or study's parent: the refit of its choice (rps.refit)


def mark_refit(parent_id: str, refit_id: str) -> None:
    """Name the refit of the parent's choice on the parent, with its test accuracy (reported only:
    it was read after the choice, by nobody that chooses)."""
    client = mlflow.MlflowClient()
    client.set_tag(parent_id, REFIT_RUN_TAG, refit_id)
    test = client.get_run(refit_id).data.metrics.get("test_accuracy")
    if test is not None:
        client.log_metric(parent_id, "refit_test_accuracy", test)
