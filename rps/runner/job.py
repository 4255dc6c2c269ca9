"""One Hydra job: check, then train and evaluate inside an MLflow run.

Config values are checked before anything heavy is imported, then the dataset, the split and the
backbone (``training.preflight``), the tracking store next (a server that is down fails in
seconds), and the backbone is loaded (``pipeline.prepare``), all before the MLflow run starts: a bad value or a missing mirror leaves no run behind (in a sweep, a
FAILED child saying why). Whatever fails inside the run ends it FAILED (KILLED on Ctrl-C /
SIGTERM), keeping the epochs finished so far.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

from omegaconf import DictConfig, OmegaConf

from rps.common.errors import ConfigError, ResourceError, RpsError
from rps.config import validate
from rps.training.preflight import preflight
from rps.common.quiet import quiet_libraries
from rps.runner.names import child_run_name, default_run_name, swept_keys
from rps.runner.resume import JOB_KEY, backfill, checkpoints_of, job_key, requeued_run, resumed_config
from rps.training.outcome import Ending, Stop, StopKind, StopSignal

Pruner = Callable[[dict[str, float], int], Optional[str]]

log = logging.getLogger(__name__)


def _parent(cfg: DictConfig, experiment_id: str):
    """The run named by ``parent_run_id``, checked to exist in this run's experiment."""
    import mlflow

    from rps import tracking

    try:
        parent = tracking.get_run(cfg.parent_run_id)
    except mlflow.exceptions.MlflowException as err:
        raise ConfigError(
            f"parent_run_id={cfg.parent_run_id} is not a run in the tracking store ({err.error_code}). "
            "Give the id of an existing run of the same experiment, or leave parent_run_id unset."
        ) from err
    if parent.info.experiment_id != experiment_id:
        raise ConfigError(
            f"parent_run_id={cfg.parent_run_id} belongs to another experiment than "
            f"experiment_name={cfg.experiment_name}: MLflow nests runs within one experiment. "
            "Set experiment_name to the parent's experiment."
        )
    return parent


def _run_name(cfg: DictConfig, parent, overrides: Optional[list[str]]) -> str:
    """A sweep job is named by its swept values (the keys its parent lists); others by the config."""
    if parent is not None and overrides is not None:
        return child_run_name(overrides, swept_keys(parent))
    return cfg.run_name or default_run_name(cfg)


def _record_failure(cfg: DictConfig, experiment_id: Optional[str], overrides, err: RpsError, tags: dict) -> None:
    """A job nested under a parent (a sweep's) that cannot start still leaves a FAILED run saying why."""
    from rps import tracking

    try:
        experiment_id = experiment_id or tracking.setup_experiment(cfg)
        tracking.record_failed_run(experiment_id, cfg, _run_name(cfg, _parent(cfg, experiment_id), overrides),
                                   cfg.parent_run_id, err, tags)
    except Exception as failure:  # the store itself is unusable: nothing can be recorded
        log.warning("Could not record the failed job in the tracking store: %s", failure)


def _job_number(tags: dict[str, str]) -> int:
    """A study trial's number, else the Hydra multirun job's (0 outside one)."""
    if tags.get("optuna.trial_number", "").isdigit():
        return int(tags["optuna.trial_number"])
    from hydra.core.hydra_config import HydraConfig

    return int(HydraConfig.get().job.get("num") or 0) if HydraConfig.initialized() else 0


@dataclass
class Finished:
    """What a tracked run leaves its caller: its objective, its run and how it ended."""

    objective: Optional[float]  # OBJECTIVE: the exported model's validation accuracy (or fold mean); None: a refit
    run_id: str
    ending: Ending
    stop: Optional[Stop] = None  # why training ended early, if it did


def run(cfg: DictConfig, hydra_dir: Optional[Path] = None, overrides: Optional[list[str]] = None,
        command: Optional[list[str]] = None) -> float:
    """Run the experiment ``cfg``; returns its objective, the validation accuracy of the exported model.

    ``overrides`` (a multirun job's own overrides) name a sweep job's run after its swept values;
    ``command`` (the command line's overrides) is checked when it resumes a run.
    """
    return execute(cfg, hydra_dir, overrides, command=command).objective


def execute(cfg: DictConfig, hydra_dir: Optional[Path] = None, overrides: Optional[list[str]] = None,
            prepared=None, prune: Optional[Pruner] = None, extra_tags: Optional[dict[str, str]] = None,
            command: Optional[list[str]] = None) -> Finished:
    """:func:`run`, for callers that run many: ``prepared`` reuses a loaded backbone (when it is
    the one ``cfg`` names), ``prune(metrics, epoch)`` sees each epoch and returns a reason when the
    run should stop there (a search's pruner: the run then ends KILLED, tagged PRUNED), and
    ``extra_tags`` go on the run from its start."""
    from rps import tracking

    quiet_libraries()  # also in a launcher's worker process, which no command started
    experiment_id = None
    resume = cfg.resume
    if resume:
        cfg = resumed_config(cfg, command or [])
    try:
        validate(cfg)
        reusable = prepared is not None and (prepared.cfg.backbone.handle, prepared.cfg.backbone.image_size) == \
            (cfg.backbone.handle, cfg.backbone.image_size) and prepared.cfg.dataset == cfg.dataset
        source = prepared.source if reusable else preflight(cfg)  # the dataset, split and backbone: seconds
        experiment_id = tracking.setup_experiment(cfg)  # fails fast when a tracking server is down
        parent = _parent(cfg, experiment_id) if cfg.parent_run_id else None
        key = job_key(cfg.parent_run_id, overrides) if parent is not None and overrides is not None else None
        if key and not resume:
            resume = requeued_run(cfg, experiment_id, key)
        from rps.training import outputs, pipeline  # imports TensorFlow

        prepared = replace(prepared, cfg=cfg) if reusable else pipeline.prepare(cfg, source)
    except RpsError as err:
        if cfg.parent_run_id:
            _record_failure(cfg, experiment_id, overrides, err, extra_tags or {})
        raise
    from rps.runner.rerun import RERUN_TAG, rerun_command
    from rps.tracking.store import ui_link

    asked = tracking.epochs_asked(cfg)
    tags = tracking.environment_tags() | {"dataset": prepared.source.name, "backbone_handle": cfg.backbone.handle,
                                          tracking.EPOCHS_ASKED: str(asked), RERUN_TAG: rerun_command(cfg)}
    tags |= (extra_tags or {}) | ({JOB_KEY: key} if key else {})
    if parent is not None:
        tags[tracking.PARENT_TAG] = parent.info.run_id
        tags[tracking.RUN_COLOR] = tracking.child_color(_job_number(tags))
    name = _run_name(cfg, parent, overrides)
    about = {"experiment_name": cfg.experiment_name, "run_name": name, "parent_run_id": cfg.parent_run_id}
    staging = Path(cfg.mlruns_dir).expanduser().resolve() / "unsent" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    stop = StopSignal()
    with tracking.tracked_run(experiment_id, name, tags, staging, about, stop, resume) as report:
        link = ui_link(experiment_id, report.run_id)
        log.info("MLflow run %s in experiment '%s'%s%s", report.run_id, cfg.experiment_name,
                 " (resumed)" if resume else "", f": {link}" if link else "")
        checkpoints = checkpoints_of(cfg, report.run_id)
        if resume:
            backfill(report, cfg, checkpoints)
        else:
            resolved = {"dataset.version": prepared.source.version}  # null in the config: the newest prepared
            keep = tuple(swept_keys(parent)) if parent is not None else ()  # a sweep's table shows them all
            tracking.log_config(report, cfg, hydra_dir, resolved, keep)  # first artifact: an unwritable store fails
            tracking.log_provenance(report, cfg)  # what rps.reproduce needs: the package lock, machine, diff, digests
            checkpoints.start({"run_id": report.run_id, "config": OmegaConf.to_container(cfg, resolve=True)})
        on_epoch = _pruning(prune, stop, report) if prune else None
        out = pipeline.train_and_evaluate(prepared, report, stop, on_epoch, checkpoints)
        report.tags(tracking.epoch_tags(asked, int(out.metrics["epochs_trained"]), out.stop is not None))
        outputs.report_outputs(cfg, out, report)
        if not report.offline:  # finished (or pruned): nothing left to resume
            checkpoints.clear()
    if Ending.of(stop()) is Ending.FINISHED:
        _publish(cfg, report.run_id)
    return Finished(out.objective, report.run_id, Ending.of(stop()), stop())


def _publish(cfg: DictConfig, run_id: str) -> None:
    """A finished run's registered versions get their model card; a run that is not part of a sweep
    or study (which choose among their runs) takes the champion alias if it beats the holder."""
    from rps import tracking

    try:
        if cfg.register_model:
            tracking.card_registered_versions(run_id, f"register_model={cfg.register_model}: registered by its "
                                                      "own run (no choice among runs)")
        if cfg.champion.enabled and not cfg.parent_run_id:
            tracking.promote(run_id, cfg.champion.model_name or cfg.experiment_name, cfg.champion.alias,
                             cfg.champion.force, "a single run (no choice among runs)")
    except Exception as err:  # the registry refused (permissions, a name MLflow rejects)
        first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise ResourceError(f"Run {run_id} finished, but its model could not be registered or promoted: {first}. "
                            "Fix champion.model_name / register_model or your registry permissions.") from err


def _pruning(prune: Pruner, stop: StopSignal, report):
    """The per-epoch hook that asks ``prune`` and, when it gives a reason, stops the run there."""

    def on_epoch(metrics: dict[str, float], epoch: int) -> None:
        reason = prune(metrics, epoch) if stop() is None else None
        if reason:
            stop.request(StopKind.PRUNED, reason)
            report.tags({"trial_state": "PRUNED", "pruned_reason": reason})

    return on_epoch
