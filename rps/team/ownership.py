"""Owners: nobody but a run's owner (and admins) may change the run, and nobody but a logged
model's owner may change the model.

Upstream (MLflow 3.17.2): ``runs/create`` stores whatever ``user_id`` and ``mlflow.user`` tag the
client sends (``handlers._create_run``), and permissions are per experiment: whoever may EDIT an
experiment may change every run in it (tags such as ``rps.model_uri``, params, metrics, status,
deletion), write its artifacts, and write the artifacts and tags of every logged model in it
(``<experiment>/models/<model_id>/artifacts/``, where MLflow "models from code" keep the Python
file that runs when the model is loaded).

Here:

- a run's owner is ``run.info.user_id``, which :mod:`rps.team.guard` sets to the signed-in user
  when the run is created (the client's value is replaced, and so is its ``mlflow.user`` tag);
  no MLflow API changes ``user_id`` afterwards;
- a logged model's owner is its tag ``rps.owner``, which the guard sets to the signed-in user when
  the model is created; a model without it (logged before this guard) is owned by its source
  run's owner; a ``source_run_id`` given at creation must be a run the user owns;
- every request that MLflow's own validators treat as a change of a run or a logged model (the
  validators in :data:`GUARDED`) is refused with 403 unless the signed-in user owns every run
  and logged model the request names anywhere (path, query, JSON body, nested lists), or is an
  admin; and nobody but an admin writes the tags ``mlflow.user`` and ``rps.owner``.

Runs created before this guard keep the ``user_id`` their client sent (often the OS user name):
if that is no account's name, only admins can change them.
"""

from __future__ import annotations

import json
import re
from typing import Iterable, Optional

OWNER_TAG = "rps.owner"
RESERVED_TAGS = frozenset({"mlflow.user", OWNER_TAG})  # set by the server alone
RUN_KEYS = frozenset({"run_id", "run_uuid", "runId", "runUuid", "source_run_id", "sourceRunId"})
MODEL_KEYS = frozenset({"model_id", "modelId"})
_MODEL_IN_PATH = re.compile(r"/mlflow/logged-models/([^/]+)(?:/tags/([^/]+))?")

# MLflow's validators (mlflow.server.auth) of requests that change a run or a logged model.
GUARDED = frozenset({
    "validate_can_update_run", "validate_can_delete_run", "validate_can_manage_run",
    "validate_can_log_metric", "validate_can_log_batch", "validate_can_log_inputs",
    "validate_can_log_outputs", "validate_can_update_run_artifact", "validate_can_link_traces_to_run",
    "validate_can_update_run_or_logged_model", "validate_can_create_logged_model",
    "validate_can_update_logged_model", "validate_can_delete_logged_model",
    "validate_can_manage_logged_model",
})


def run_owner(store, run_id: str) -> Optional[str]:
    """Who owns the run (its ``user_id``), or None if there is no such run."""
    try:
        return store.get_run(run_id).info.user_id or None
    except Exception:  # no such run (MLflow raises RESOURCE_DOES_NOT_EXIST or a 400 for bad ids)
        return None


def model_owner(store, model_id: str) -> Optional[str]:
    """Who owns the logged model: its ``rps.owner`` tag, else its source run's owner, else None."""
    try:
        model = store.get_logged_model(model_id)
    except Exception:
        return None
    if model.tags.get(OWNER_TAG):
        return model.tags[OWNER_TAG]
    return run_owner(store, model.source_run_id) if model.source_run_id else None


def _walk(value, depth: int = 0) -> Iterable[tuple[str, object]]:
    """Every (key, value) pair in a JSON document, to a bounded depth."""
    if depth > 8:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item
            yield from _walk(item, depth + 1)
    elif isinstance(value, list):
        for item in value[:100000]:
            yield from _walk(item, depth + 1)


def request_document(args: dict, view_args: dict, body) -> dict:
    """What a request names, as one JSON-like document (a double-encoded body decoded, as MLflow does)."""
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            body = None
    return {"args": args, "view_args": view_args, "body": body}


def named(document: dict, path: str) -> tuple[set[str], set[str], set[str]]:
    """The run ids, logged-model ids and tag/param/metric keys a request names anywhere."""
    runs, models, keys = set(), set(), set()
    for key, value in _walk(document):
        values = value if isinstance(value, list) else [value]
        strings = [v for v in values if isinstance(v, str) and v]
        if key in RUN_KEYS:
            runs.update(strings)
        elif key in MODEL_KEYS:
            models.update(strings)
        elif key == "key":
            keys.update(strings)
    for model_id, tag_key in _MODEL_IN_PATH.findall(path):
        models.add(model_id)
        if tag_key:
            keys.add(tag_key)
    return runs, models, keys


def refusal(store, username: str, runs: set[str], models: set[str], keys: set[str]) -> Optional[str]:
    """Why ``username`` (not an admin) may not make this change, or None if they may. (``keys``:
    the tag keys written; leave out those the server itself stamped on a create.)"""
    reserved = sorted(keys & RESERVED_TAGS)
    if reserved:
        return f"the tag {reserved[0]} is set by the server; nobody but an admin may write it"
    for run_id in sorted(runs):
        owner = run_owner(store, run_id)
        if owner != username:
            return f"only the owner of run {run_id} ({owner or 'unknown'}) or an admin may change it"
    for model_id in sorted(models):
        owner = model_owner(store, model_id)
        if owner != username:
            return f"only the owner of logged model {model_id} ({owner or 'unknown'}) or an admin may change it"
    return None


def artifact_refusal(store, username: str, artifact: str) -> Optional[str]:
    """Why ``username`` (not an admin) may not write the plain artifact path, or None if they may.

    Writes land in a run's or a logged model's artifacts that the user owns, under the experiment
    the run or model belongs to. Trace artifacts are left to MLflow's experiment permission
    (traces carry no owner). Anything else (an experiment's root, a run's folder beside
    ``artifacts/``) is refused.
    """
    from rps.team.artifact_paths import owner_of_path

    target = owner_of_path(artifact)
    if target is None:
        return "artifacts are written inside a run's or a logged model's artifacts/ folder only"
    kind, experiment_id, ident = target
    if kind == "trace":
        return None
    try:
        entity = store.get_run(ident).info if kind == "run" else store.get_logged_model(ident)
    except Exception:
        return f"there is no {kind} {ident}"
    if entity.experiment_id != experiment_id:
        return f"the {kind} {ident} does not belong to experiment {experiment_id}"
    return refusal(store, username, {ident} if kind == "run" else set(), {ident} if kind == "model" else set(), set())
