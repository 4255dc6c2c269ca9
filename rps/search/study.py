"""Hyper-parameter search with Optuna over the composed Hydra config, on validation accuracy only.

    python -m rps.tune +experiment=search_head                        # the study the experiment declares
    python -m rps.tune +experiment=search_head search.trials=50 epochs=10
    python -m rps.tune +experiment=search_head search.storage=postgresql+psycopg2://...  # one of many workers

The search space and study settings are the config's ``search`` group (rps.search.config),
usually declared by a named experiment; every other override applies to every trial. Each trial is
a full tracked run (rps.runner.job), composed with Hydra from the command's overrides plus the
sampled values (without the ``search`` block, which its parent run records), nested in MLflow under
one parent run per study and named by its sampled values. Optuna maximizes the run's objective
(rps.training.outcome.OBJECTIVE); per-epoch validation accuracy feeds the pruner. The test split is evaluated and logged for every trial and never looked at.

Several processes (or machines) running the same command share the study through its storage
(sqlite under mlruns/ by default, a PostgreSQL URL for several machines): Optuna hands out trial
numbers, and all share one parent run. Rerunning an interrupted study resumes it: a trial a Ctrl-C
or signal cut short is asked again first, with the same values, and its run continues from its
last checkpoint (the same job key, as a sweep job launched again). A pruned trial
ends KILLED with the tag ``trial_state=PRUNED``; a failing one FAILED with its reason, and the
study goes on.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from rps.common.errors import ConfigError, ResourceError, RpsError, release_interrupted, signals_held
from rps.config import validate
from rps.config.schema import Config
from rps.search.config import directions, objective_format, search_checks
from rps.search.pareto import report_pareto
from rps.training.outcome import OBJECTIVE, Ending

log = logging.getLogger(__name__)
COUNTED = ("COMPLETE", "PRUNED", "FAIL")  # trial states that use up the study's budget
STUDY_TAG = "rps.study"


def _value(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def space_keys(space: DictConfig) -> list[str]:
    """The config keys (or groups) a search space sets, in its order."""
    return [spec.get("key") or name for name, spec in space.items()]


def sample(trial, space: DictConfig) -> list[str]:
    """The trial's values for the search space, as Hydra overrides (``optimizer.lr=0.00123``)."""
    overrides = []
    for (name, spec), key in zip(space.items(), space_keys(space)):
        if spec.type == "categorical":
            value = trial.suggest_categorical(name, list(spec.choices))
        elif spec.type == "int":
            value = trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.get("step") or 1),
                                      log=bool(spec.get("log")))
        else:
            value = trial.suggest_float(name, float(spec.low), float(spec.high), log=bool(spec.get("log")),
                                        step=spec.get("step"))
        overrides.append(f"{key}={_value(value)}")
    return overrides


def trial_seed(seed: Optional[int], number: int) -> Optional[int]:
    """The sampler's seed for trial ``number`` of a study seeded ``seed`` (None: unseeded).

    Drawn from both, so each trial has draws of its own whichever worker asks it: workers that all
    seeded their sampler with ``seed`` drew the same values, and half the trials of a two-worker
    study repeated the other half. A study run again with the same seed asks the same values for
    its random trials (and, on one worker, for all of them)."""
    import numpy as np

    return None if seed is None else int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def _sampler(cfg: DictConfig, number: int = 0):
    """The study's sampler, seeded for trial ``number`` (see :func:`trial_seed`)."""
    import optuna

    seed = trial_seed(cfg.seed, number)
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, min(10, cfg.trials // 3)))


def _pruner(cfg: DictConfig, epochs: int):
    import optuna

    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=cfg.warmup_epochs)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 2))
    return optuna.pruners.NopPruner()


def _same_objectives(study, objectives: list[str]):
    """The study, if it optimises ``objectives`` (an existing study keeps the directions it was created with)."""
    recorded = study.user_attrs.get("objectives")
    if recorded is None and [d.name.lower() for d in study.directions] == directions(objectives):
        study.set_user_attr("objectives", list(objectives))
        return study
    if recorded != list(objectives):
        raise ConfigError(f"The Optuna study '{study.study_name}' optimises {recorded or [OBJECTIVE]}, not "
                          f"{list(objectives)}: give this search another search.study name, or its own objectives.")
    return study


class Study:
    """One worker of an Optuna study whose trials are tracked rps runs under one MLflow parent."""

    def __init__(self, cfg: DictConfig, overrides: list[str], hydra_dir: Optional[Path]):
        import optuna

        from rps import tracking

        validate(cfg, [search_checks])
        if not cfg.search.space:
            raise ConfigError("search.space is empty: declare what to search (e.g. python -m rps.tune "
                              "+experiment=search_head, or the search block of your own experiment).")
        self.cfg, self.overrides, self.hydra_dir = cfg, overrides, hydra_dir
        self.compose([])  # the command's own config composes, or nothing starts
        self.name = cfg.search.study or cfg.experiment_name
        self.storage = cfg.search.storage or f"sqlite:///{Path(cfg.mlruns_dir).expanduser().resolve() / 'optuna.db'}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = self._open_study()
        self.experiment_id = tracking.setup_experiment(cfg)
        self.tracking_uri = tracking.resolve_tracking_uri(cfg.tracking_uri, cfg.mlruns_dir)[0]
        self.parent_id = self._parent()
        from rps.training.pipeline import prepare

        self.prepared = prepare(cfg)  # the backbone, loaded once for every trial that uses it

    def _open_study(self):
        """The study, created or loaded. Workers starting together may race to create the storage's
        tables: a sqlite file is created under a lock; other databases get a few tries."""
        import optuna

        from rps import tracking

        for attempt in range(3):
            try:
                with self._storage_lock():
                    study = optuna.create_study(study_name=self.name, storage=self.storage,
                                                directions=directions(self.cfg.search.objectives),
                                                sampler=_sampler(self.cfg.search),
                                                pruner=_pruner(self.cfg.search, self.cfg.epochs), load_if_exists=True)
                    return _same_objectives(study, self.cfg.search.objectives)
            except ConfigError:
                raise
            except Exception as err:  # SQLAlchemy and Optuna raise many types for a storage they cannot use
                if attempt == 2:
                    raise ConfigError(f"Cannot use the Optuna storage {tracking.redact(self.storage)}: "
                                      f"{str(err).splitlines()[0][:300]}. Fix search.storage (a database URL).") from err
                time.sleep(1 + attempt)

    def _storage_lock(self):
        """An exclusive lock for this machine's workers on a sqlite storage (a database server's
        workers rely on Optuna's own transactions)."""
        from rps.common.files import exclusive

        if not self.storage.startswith("sqlite:///"):
            return nullcontext()
        db = Path(self.storage[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        return exclusive(db.with_name(db.name + ".lock"))

    def requeue_interrupted(self) -> list[int]:
        """Ask the trials an interrupt cut short again, first and with the same values: their runs
        left a checkpoint and resume from it (rps.runner.resume.requeued_run finds them by job key).
        Each is requeued once; returns the numbers of the trials requeued."""
        from optuna.trial import TrialState

        with self._storage_lock():
            trials = self.study.get_trials(deepcopy=False)
            requeued = {t.user_attrs.get("resumes_trial") for t in trials}
            cut = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("interrupted")
                   and t.number not in requeued and t.params]
            for trial in cut:
                self.study.enqueue_trial(trial.params, user_attrs={"resumes_trial": trial.number})
        return [t.number for t in cut]

    # ------------------------------------------------------------------ the study's parent run

    def _parent(self) -> str:
        """The study's one parent run (shared by every worker), RUNNING while the study runs."""
        from rps import tracking

        key = f"{tracking.redact(self.storage)}#{self.name}"
        keys = space_keys(self.cfg.search.space)
        tags = {"sweep": "parent", "sweep.keys": ",".join(keys), "optuna.study": self.name,
                "optuna.storage": tracking.redact(self.storage)}
        params = {f"search.{k}": v for k, v in tracking.config_params(self.cfg.search).items()}
        name = f"study {self.name} {' x '.join(keys)} ({self.cfg.search.trials} trials)"
        parent = tracking.shared_parent_run(self.experiment_id, STUDY_TAG, key, name, tags, params)
        self.study.set_user_attr("mlflow_parent_run_id", parent)
        return parent

    # ------------------------------------------------------------------ trials

    def compose(self, extra: list[str]) -> DictConfig:
        """A trial's config: this command's with ``extra`` overrides, composed by Hydra (without its
        own node), as a plain run's config (the ``search`` block stays with the study's parent)."""
        from hydra import compose

        composed = compose(config_name="tune", overrides=self.overrides + extra)
        trial = OmegaConf.structured(Config)
        for key in composed:
            if key != "search":
                trial[key] = composed[key]
        return trial

    def budget_left(self) -> bool:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        used = [t for t in trials if t.state.name in COUNTED and not t.user_attrs.get("interrupted")]
        running = [t for t in trials if t.state == TrialState.RUNNING]
        return len(used) + len(running) < self.cfg.search.trials

    def run(self) -> None:
        trial = None
        for number in self.requeue_interrupted():
            log.info("Trial %d was interrupted: asked again with its values, its run resumes", number)
        try:
            while self.budget_left():
                with signals_held():  # a Ctrl-C inside ask comes once the new trial has a name to close
                    trial = self.study.ask()
                self.study.sampler = _sampler(self.cfg.search, trial.number)  # draws at suggest: this trial's own
                self._trial(trial)
        except KeyboardInterrupt as err:  # in a trial, or between two: the study's records stay true
            release_interrupted(err)  # a storage write it cut short must not keep the storage locked
            if trial is not None and self._running(trial):  # asked, not yet told: it never counts
                from optuna.trial import TrialState

                trial.set_user_attr("interrupted", True)
                self.study.tell(trial, state=TrialState.FAIL)
            self.finish(interrupted=True)
            raise
        self.finish()

    def _running(self, trial) -> bool:
        from optuna.trial import TrialState

        return trial.number in {t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}

    def _trial(self, trial) -> None:
        from optuna.trial import TrialState

        from rps.runner import job

        values = sample(trial, self.cfg.search.space)
        pinned = [f"parent_run_id={self.parent_id}", f"tracking_uri='{self.tracking_uri}'",
                  f"mlruns_dir='{Path(self.cfg.mlruns_dir).expanduser().resolve()}'"]
        try:
            cfg = self.compose(values + pinned)
            cfg.export.formats = list(dict.fromkeys([*cfg.export.formats, *self.measured_formats]))
        except Exception as err:  # a sampled group option that does not exist, say
            log.error("Trial %d: its config does not compose (%s)", trial.number, err)
            trial.set_user_attr("error", str(err)[:1000])
            self.study.tell(trial, state=TrialState.FAIL)
            return

        def prune(metrics: dict, epoch: int) -> Optional[str]:
            if "val_accuracy" not in metrics or len(self.cfg.search.objectives) > 1:  # Optuna prunes one objective
                return None
            trial.report(metrics["val_accuracy"], epoch)
            if not trial.should_prune():
                return None
            return (f"pruned by Optuna's {self.cfg.search.pruner} pruner after epoch {epoch} "
                    f"(val_accuracy {metrics['val_accuracy']:.4f})")

        tags = {"optuna.trial_number": str(trial.number), "optuna.study": self.name}
        try:
            finished = job.execute(cfg, self.hydra_dir, values, prepared=self.prepared, prune=prune,
                                   extra_tags=tags)
        except Exception as err:  # its run (a FAILED child) says why; the study goes on
            if isinstance(err, RpsError):  # a clear message of ours: no traceback
                log.error("Trial %d failed: %s", trial.number, err)
                trial.set_user_attr("error", str(err)[:1000])
            else:  # an error inside training
                log.exception("Trial %d failed", trial.number)
                trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:1000])
            self.study.tell(trial, state=TrialState.FAIL)
            return
        trial.set_user_attr("run_id", finished.run_id)
        if finished.ending is Ending.PRUNED:
            self.study.tell(trial, state=TrialState.PRUNED)
            return
        scores = self.scores(finished)
        if scores is None:
            trial.set_user_attr("error", f"its run logged no {', '.join(self.cfg.search.objectives[1:])} (export failed?)")
            self.study.tell(trial, state=TrialState.FAIL)
            return
        self.study.tell(trial, scores if len(scores) > 1 else scores[0])
        log.info("Trial %d: %s -> %s", trial.number, " ".join(values),
                 ", ".join(f"{o} {_value(v)}" for o, v in zip(self.cfg.search.objectives, scores)))

    @property
    def measured_formats(self) -> list[str]:
        """The TFLite formats whose latency or size the study optimises (each trial exports them)."""
        return [objective_format(o) for o in self.cfg.search.objectives[1:]]

    def scores(self, finished) -> Optional[list[float]]:
        """The trial's value of each objective (the others from its run's metrics), None if one is missing."""
        from rps import tracking

        if len(self.cfg.search.objectives) == 1:
            return None if finished.objective is None else [finished.objective]
        metrics = tracking.get_run(finished.run_id).data.metrics
        values = [finished.objective] + [metrics.get(o) for o in self.cfg.search.objectives[1:]]
        return None if any(v is None for v in values) else values

    # ------------------------------------------------------------------ the parent's summary

    def finish(self, interrupted: bool = False) -> None:
        """Write the study's summary into the parent; close it when the study is complete."""
        from rps.search.study_report import report_study

        complete = not self.budget_left() and not any(t.state.name == "RUNNING" for t in self.study.get_trials())
        if len(self.cfg.search.objectives) > 1:
            report_pareto(self.study, self.parent_id, list(self.cfg.search.objectives))
        choice = report_study(self.study, self.parent_id, space_keys(self.cfg.search.space),
                              status="FINISHED" if complete else ("KILLED" if interrupted else None))
        states = [t.state.name for t in self.study.get_trials(deepcopy=False)]
        counts = ", ".join(f"{states.count(s)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL") if states.count(s))
        print(f"\nStudy {self.name} (MLflow run {self.parent_id}): {len(states)} trials ({counts or 'none'})"
              f"{'' if complete else ', not complete yet'}\n{choice.console() or 'No trial finished: nothing chosen.'}")
        if complete:
            self.promote()

    def promote(self) -> None:
        """champion.enabled: the summary's best trial (chosen on validation) takes the alias if it
        beats the holder (rps.tracking.champion)."""
        from rps import tracking

        try:
            tracking.promote_chosen(self.parent_id, self.cfg)
        except Exception as err:  # the registry refused (permissions, a name MLflow rejects)
            raise ResourceError(f"The study finished, but its chosen model could not be promoted: "
                                f"{str(err).splitlines()[0][:300]}. Fix champion.model_name or your registry "
                                "permissions.") from err
