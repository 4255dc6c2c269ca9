"""Refit after choice (``python -m rps.refit <run id>``): train the chosen config again on every
training example, validation included, and log that model as the deliverable.

A sweep or study chooses on validation (rps.search.chosen tags its parent ``best_run_id``); the
chosen run's model never trained on the images validation held out. The refit takes the chosen
run's logged config (rps.config.logged) and changes only what must change:

- ``split.refit=true``: validation's images train too (grouping and folds, which only shape
  validation, are switched off); the test split is the chosen run's, evaluated once, reported only;
- the number of epochs of each phase the chosen model was trained for: as configured, or with early
  stopping the epochs that run kept (its best epoch when it restored the best weights), since
  nothing can stop a refit on validation it does not have;
- no export formats (each is measured on validation); the SavedModel is logged and registered as
  asked on the command line.

The new run is tagged ``rps.refit_of=<chosen run>`` (and ``rps.refit_parent=<parent>`` when given a
sweep's or study's parent, which is tagged ``refit_run_id`` with the metric ``refit_test_accuracy``).
Nothing here reads a test metric to decide anything: the choice is the parent's, made on validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import DictConfig

from rps.common.errors import ResourceError
from rps.config.logged import logged_config
from rps.runner.reproduce import logged_run, rerun_config
from rps.tracking import provenance

REFIT_OF_TAG, REFIT_PARENT_TAG = "rps.refit_of", "rps.refit_parent"
CHOSEN_TAG = "best_run_id"  # what a sweep's or study's parent names its chosen child by


@dataclass
class Plan:
    chosen: object  # the MLflow run whose config is refitted
    parent: Optional[object]  # the sweep or study that chose it, if the command was given one
    cfg: DictConfig  # the refit's config
    changes: list[str]  # what differs from the chosen run's config, in words


def _run(run_id: str, uri: str):
    return logged_run(run_id, uri, "a sweep's or study's parent run id (or a single run's)")


def _kept_epochs(run, cfg: DictConfig) -> dict[int, int]:
    """Epochs of each phase the chosen model trained for (phase 1 only for a frozen run)."""
    from rps.tracking import phase_epochs

    if not cfg.early_stopping.enabled:
        return {1: cfg.epochs} | ({2: cfg.backbone.fine_tune_epochs} if cfg.backbone.trainable else {})
    return phase_epochs(run.info.run_id, best=cfg.early_stopping.restore_best_weights)


def refit_config(run, cfg: DictConfig, kept: dict[int, int], uri: str, mlruns_dir: str) -> tuple[DictConfig, list[str]]:
    """The chosen run's config as its refit, and the changes in words."""
    if cfg.optimizer.schedule == "plateau":
        raise ResourceError(f"Run {run.info.run_id} used optimizer.schedule=plateau, which lowers the learning "
                            "rate when validation loss stalls: a refit has no validation to replay it on. "
                            "Refit a run with schedule none or cosine.")
    cfg = rerun_config(run, cfg, uri, mlruns_dir)
    changes = [f"split.refit=true: the chosen run's {run.data.params.get('data.n_val', '?')} validation images train too"]
    if cfg.split.group_by != "none" or cfg.split.folds != 1:
        changes.append(f"split.group_by {cfg.split.group_by} -> none, split.folds {cfg.split.folds} -> 1 "
                       "(they only shaped validation)")
    cfg.split.refit, cfg.split.group_by, cfg.split.folds = True, "none", 1
    if cfg.early_stopping.enabled:
        cfg.early_stopping.enabled = False
        cfg.epochs = max(1, kept.get(1, cfg.epochs))
        if cfg.backbone.trainable:
            cfg.backbone.fine_tune_epochs = max(1, kept.get(2, cfg.backbone.fine_tune_epochs))
        changes.append(f"early stopping off; epochs {cfg.epochs}"
                       + (f", fine_tune_epochs {cfg.backbone.fine_tune_epochs}" if cfg.backbone.trainable else "")
                       + " (what the chosen model trained for)")
    if list(cfg.export.formats or []):
        changes.append(f"export.formats {list(cfg.export.formats)} -> [] (each is measured on validation)")
        cfg.export.formats = []
    cfg.export.model = True
    cfg.run_name = f"refit {run.info.run_name}"[:250]
    return cfg, changes


def plan(run_id: str, uri: str, mlruns_dir: str) -> Plan:
    """The chosen run (the parent's ``best_run_id``, or the run itself) and its refit's config."""
    given = _run(run_id, uri)
    parent, chosen = None, given
    if CHOSEN_TAG in given.data.tags:
        parent, chosen = given, _run(given.data.tags[CHOSEN_TAG], uri)
    elif REFIT_OF_TAG in given.data.tags:
        raise ResourceError(f"Run {run_id} is itself a refit (of {given.data.tags[REFIT_OF_TAG]}).")
    if chosen.info.status != "FINISHED":
        raise ResourceError(f"Run {chosen.info.run_id} ended {chosen.info.status}: only a finished run's config "
                            "was chosen on a complete validation.")
    text = provenance.recorded_text(chosen.info.run_id, "config/config.yaml")
    if text is None:
        raise ResourceError(f"Run {chosen.info.run_id} has no config/config.yaml and no {CHOSEN_TAG} tag: give a "
                            "sweep's or study's parent (after it chose) or a single rps run.")
    logged = logged_config(text)
    cfg, changes = refit_config(chosen, logged, _kept_epochs(chosen, logged), uri, mlruns_dir)
    return Plan(chosen, parent, cfg, changes)


def refit(the_plan: Plan):
    """Run the plan as a new tracked run; record it on the parent; returns rps.runner.job.Finished."""
    from rps.runner import job
    from rps.tracking.choice import mark_refit
    from rps.training.outcome import Ending

    tags = {REFIT_OF_TAG: the_plan.chosen.info.run_id}
    if the_plan.parent is not None:
        tags[REFIT_PARENT_TAG] = the_plan.parent.info.run_id
    finished = job.execute(the_plan.cfg, extra_tags=tags)
    if finished.ending is not Ending.FINISHED:
        raise ResourceError(f"The refit {finished.run_id} ended {finished.ending.value}.")
    if the_plan.parent is not None:
        mark_refit(the_plan.parent.info.run_id, finished.run_id)
    return finished
