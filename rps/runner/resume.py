"""Resuming a run from its last checkpoint (``python -m rps.run resume=<run id>``, or a sweep job
launched again — a SLURM requeue — which finds its own unfinished run by its job key): the run's
own config, the same MLflow run, and the epochs it finished but never logged (killed between its
checkpoint and the metrics write) logged first, so its history has no gap and no duplicate."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from rps.common.errors import ConfigError
from rps.config.logged import typed_config
from rps.training.checkpoints import Checkpoints

# What a resume may set on its command line: where the run's store and checkpoints are.
LOCATION_KEYS = ("resume", "tracking_uri", "mlruns_dir")


JOB_KEY = "rps.job_key"  # a sweep job's identity: its parent run and its overrides


def job_key(parent_run_id: str, overrides: list[str]) -> str:
    """The same job of the same sweep has the same key, wherever and however often it runs."""
    return hashlib.sha256("\0".join([parent_run_id, *sorted(overrides)]).encode()).hexdigest()[:32]


def requeued_run(cfg: DictConfig, experiment_id: str, key: str) -> Optional[str]:
    """The run of this same sweep job that left a checkpoint (the job was preempted, requeued, or
    killed and launched again: a run that finished training removed its checkpoints, whatever
    status its process managed to record): it resumes instead of starting over."""
    from rps import tracking

    for run in tracking.tagged_runs(experiment_id, JOB_KEY, key):
        if checkpoints_of(cfg, run.info.run_id).latest() is not None:
            return run.info.run_id
    return None


def checkpoints_of(cfg: DictConfig, run_id: str) -> Checkpoints:
    """Where the checkpoints of ``run_id`` live: beside the run's local state."""
    return Checkpoints(Path(cfg.mlruns_dir).expanduser().resolve() / "checkpoints" / run_id)


def resumed_config(cfg: DictConfig, command: list[str]) -> DictConfig:
    """The config run ``cfg.resume`` was started with; only where it is stored may change."""
    others = [o for o in command if o.partition("=")[0].lstrip("+~") not in LOCATION_KEYS]
    if others:
        raise ConfigError(
            f"resume={cfg.resume} continues the run with the config it was started with; drop "
            f"{' '.join(others)} (only {', '.join(LOCATION_KEYS[1:])} may be given with resume)."
        )
    values = checkpoints_of(cfg, cfg.resume).run()["config"]
    values |= {key: cfg[key] for key in LOCATION_KEYS}  # this command's store and folder
    return typed_config(OmegaConf.create(values))


def backfill(report, cfg: DictConfig, checkpoints: Checkpoints) -> None:
    """Log the checkpoint's epochs the run has not logged yet (the process died in between)."""
    from rps import tracking

    saved = checkpoints.latest()
    if saved is None:
        return
    logged = tracking.logged_epochs(report.run_id, "train_loss")  # (a refit logs no validation metric)
    for epoch in range(logged + 1, saved.epoch + 1):
        metrics = {k: v[epoch - 1] for k, v in saved.history.items() if len(v) >= epoch}
        if cfg.backbone.trainable:
            metrics["phase"] = 1 if epoch <= saved.phase1_epochs or saved.phase == 1 else 2
        report.epoch(metrics, epoch)



