"""The champion: one alias of a registered model (``<name>@champion``) that moves only to a model
that beats its holder on validation, on the same split.

A chosen run (a single run, or a sweep's or study's best on validation) is registered as a new
version of ``champion.model_name`` and takes ``@<alias>`` when no version holds it, or when its
validation objective (rps.training.outcome.OBJECTIVE) is strictly higher than the holder's and
both were chosen on the same split (equal ``rps.data.split_digest``: same data, same train,
validation and test examples), or when forced. Otherwise nothing is registered. The new
version's tags record the previous holder and the rule applied; the run's tag
``rps.champion.decision`` says what happened either way. Every version registered here, or by a
run's ``register_model``, gets a model card (rps.tracking.model_card).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import mlflow

from rps.tracking import model_card
from rps.training.outcome import objective_of

log = logging.getLogger(__name__)
SPLIT_TAG = "rps.data.split_digest"
MODEL_URI_TAG = "rps.model_uri"
DECISION_TAG = "rps.champion.decision"
PREFIX = "rps.champion."  # tags of a promoted version: objective, split_digest, rule, forced, previous_*


@dataclass(frozen=True)
class Candidate:
    """A model as the champion rule sees it."""

    run_id: str
    objective: Optional[float]
    split_digest: Optional[str]
    version: Optional[str] = None  # its registered version, for a holder


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def of_run(run, version: Optional[str] = None) -> Candidate:
    return Candidate(run.info.run_id, objective_of(run.data.metrics), run.data.tags.get(SPLIT_TAG), version)


def decide(new: Candidate, holder: Optional[Candidate], force: bool) -> Decision:
    """Whether ``new`` takes the alias from ``holder`` (None: nobody holds it), and why."""
    if holder is None:
        return Decision(True, "no version held the alias")
    if holder.run_id == new.run_id:
        return Decision(False, f"its model already holds the alias (version {holder.version})")
    if new.objective is None:
        return Decision(force, _forced(force, "it has no validation objective"))
    if not holder.split_digest or holder.split_digest != new.split_digest:
        why = (f"not comparable with version {holder.version}: another split (split digest "
               f"{(new.split_digest or 'not recorded')[:12]} vs {(holder.split_digest or 'not recorded')[:12]})")
        return Decision(force, _forced(force, why))
    if holder.objective is None or new.objective > holder.objective:
        return Decision(True, f"its validation objective {new.objective:.4f} beats version {holder.version}'s "
                              f"{_number(holder.objective)} on the same split")
    return Decision(force, _forced(force, f"its validation objective {new.objective:.4f} does not beat version "
                                          f"{holder.version}'s {holder.objective:.4f} on the same split"))


def _forced(force: bool, why: str) -> str:
    return f"forced (champion.force=true), although {why}" if force else why


def _number(value: Optional[float]) -> str:
    return "(none)" if value is None else f"{value:.4f}"


def holder(name: str, alias: str) -> Optional[Candidate]:
    """The version holding ``name@alias``, as a candidate (None when none does)."""
    client = mlflow.MlflowClient()
    try:
        version = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:  # no such registered model, or no such alias
        return None
    try:
        return of_run(client.get_run(version.run_id), version.version)
    except mlflow.exceptions.MlflowException:  # its run was deleted: nothing to compare with
        return Candidate(version.run_id or "", None, None, version.version)


def promote(run_id: str, name: str, alias: str, force: bool, chosen_by: str) -> Decision:
    """Register ``run_id``'s model as ``name`` and move ``@alias`` to it if :func:`decide` says so;
    the run's tag ``rps.champion.decision`` records the outcome, the new version its card."""
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    if MODEL_URI_TAG not in run.data.tags:
        decision = Decision(False, "its run logged no model (export.model=false): rerun its config with "
                                   "export.model=true champion.enabled=true")
    else:
        previous = holder(name, alias)
        decision = decide(of_run(run), previous, force)
        if decision.promote:
            version = _register(run, name, alias, decision, previous, force)
            write_card(name, version, run, chosen_by, f"{name}@{alias}: {decision.reason}")
            decision = Decision(True, f"registered as {name} version {version} and moved @{alias} to it: {decision.reason}")
    client.set_tag(run_id, DECISION_TAG, decision.reason[:5000])
    log.info("Champion %s@%s: %s", name, alias, decision.reason)
    return decision


def _register(run, name: str, alias: str, decision: Decision, previous: Optional[Candidate], force: bool) -> str:
    tags = {f"{PREFIX}objective": _number(objective_of(run.data.metrics)),
            f"{PREFIX}split_digest": run.data.tags.get(SPLIT_TAG, "not recorded"),
            f"{PREFIX}rule": decision.reason[:5000], f"{PREFIX}forced": str(force).lower(),
            f"{PREFIX}previous_version": previous.version if previous else "none",
            f"{PREFIX}previous_run_id": previous.run_id if previous else "none",
            f"{PREFIX}previous_objective": _number(previous.objective) if previous else "none"}
    version = mlflow.register_model(run.data.tags[MODEL_URI_TAG], name, tags=tags).version
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    return str(version)


def promote_best(parent_id: str, name: str, alias: str, force: bool) -> Optional[Decision]:
    """:func:`promote` the best child a sweep's or study's summary chose (its parent's tag
    ``best_run_id``); None when it chose none (no child finished)."""
    parent = mlflow.MlflowClient().get_run(parent_id)
    best = parent.data.tags.get("best_run_id")
    if not best:
        log.warning("Champion %s@%s: the search chose no run (none finished); nothing to promote.", name, alias)
        return None
    chosen_by = (f"{parent.data.tags.get('best_chosen_by', 'the best validation objective')}, among the runs of "
                 f"{parent.info.run_name} (run {parent_id})")
    return promote(best, name, alias, force, chosen_by)


def write_card(name: str, version: str, run, chosen_by: str, champion: Optional[str] = None) -> str:
    """The version's model card: an artifact of its run and the version's registry description."""
    client = mlflow.MlflowClient()
    run = client.get_run(run.info.run_id)  # its latest record: the metrics logged since it was read
    card = model_card.render(run, name, version, chosen_by, champion)
    path = model_card.card_path(name, version)
    client.log_text(run.info.run_id, card, path)
    client.update_model_version(name, version, description=model_card.description(card, run.info.run_id, path))
    return card


def card_registered_versions(run_id: str, chosen_by: str) -> None:
    """A model card for every registered version of ``run_id``'s model (``register_model``) that has none."""
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    for version in client.search_model_versions(f"run_id = '{run_id}'"):
        if not version.description:
            write_card(version.name, str(version.version), run, chosen_by)


def promote_chosen(parent_id: str, cfg) -> Optional[Decision]:
    """With ``champion.enabled``: :func:`promote_best` of a sweep's or study's parent, under
    ``champion.model_name`` (default: the experiment's name)."""
    if not cfg.champion.enabled:
        return None
    return promote_best(parent_id, cfg.champion.model_name or cfg.experiment_name, cfg.champion.alias,
                        cfg.champion.force)
