"""The contract of a run with whatever runs it (a single run, a sweep, an Optuna study, the
benchmarks): the one metric it is judged by, how it stopped, and what it leaves.

- :data:`OBJECTIVE` names the metric every choice reads (Hydra's sweeper, Optuna, a sweep's best
  child, ``rps.compare``): the validation accuracy of the model the run exports — its last
  epoch's weights, or the best epoch's when early stopping restored them — or, with
  ``split.folds=K``, the mean over the K folds. The tag :data:`OBJECTIVE_TAG` says which.
  Runs logged before it was renamed carry :data:`LEGACY_OBJECTIVE` instead.
- :class:`RunningObjective` is the objective as it stands after each epoch (reported with it).
- :class:`Stop` is why training ended before its last epoch (a pruned trial, a lost tracking
  server), set once by whoever decides it and read by the training loop after each epoch.
- :class:`Ending` is how a run ended, as callers (and MLflow statuses) see it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

OBJECTIVE = "selection_val_accuracy"
OBJECTIVE_LOSS = "selection_val_loss"  # the tie-break: validation loss of the same model (or fold mean)
OBJECTIVE_TAG = "selection.measures"  # what OBJECTIVE measured in this run, in words
LEGACY_OBJECTIVE, LEGACY_OBJECTIVE_LOSS = "best_val_accuracy", "best_val_loss"  # before 2026-12
# What a run leaves for its sweep's parent to compare (rps.training.outputs writes them): every test
# example's label, predicted class and confidence; the first test images as one strip of thumbnails.
PREDICTIONS, SAMPLES, THUMBNAIL = "eval/test_predictions.json", "eval/test_samples.jpg", 96


def objective_of(metrics: dict[str, float]) -> Optional[float]:
    """A run's objective from its logged metrics (older runs: their ``best_val_accuracy``)."""
    return metrics.get(OBJECTIVE, metrics.get(LEGACY_OBJECTIVE))


def objective_loss_of(metrics: dict[str, float]) -> Optional[float]:
    return metrics.get(OBJECTIVE_LOSS, metrics.get(LEGACY_OBJECTIVE_LOSS))


class RunningObjective:
    """The objective as it stands after each epoch, put first in that epoch's metrics (so MLflow,
    which lists metrics in the order they were first logged, opens on it): the validation
    accuracy and loss of the model the run would export if training ended after this epoch — the
    best epoch of the phase so far when early stopping restores the best weights (Keras restores
    them at the end of every phase, the first best epoch winning ties), else this epoch's. It is
    measured on the run's own validation carve-out: with ``split.folds=K`` the objective itself is
    the mean over K folds, known only at the end, where the run logs it as the last point."""

    def __init__(self, best_of_phase: bool):
        self.best_of_phase = best_of_phase
        self.phase: Optional[float] = None
        self.best: Optional[tuple[float, float]] = None

    def __call__(self, metrics: dict[str, float]) -> dict[str, float]:
        if "val_accuracy" not in metrics:
            return metrics
        if metrics.get("phase") != self.phase:  # a new phase: a new early-stopping record
            self.phase, self.best = metrics.get("phase"), None
        accuracy, loss = metrics["val_accuracy"], metrics.get("val_loss", float("nan"))
        if not self.best_of_phase or self.best is None or accuracy > self.best[0]:
            self.best = (accuracy, loss)
        return {OBJECTIVE: self.best[0], OBJECTIVE_LOSS: self.best[1]} | metrics


class StopKind(enum.Enum):
    PRUNED = "pruned"  # a search's pruner gave up on the trial: its run ends KILLED, tagged PRUNED
    SERVER_LOST = "server lost"  # the tracking server stopped answering: the run is kept locally


@dataclass(frozen=True)
class Stop:
    kind: StopKind
    reason: str  # one line for people: who stopped it, after which epoch, why


class StopSignal:
    """Carries the first :class:`Stop` anybody requests to the training loop, which ends training
    after the epoch in progress; the run then evaluates and exports what it has."""

    def __init__(self) -> None:
        self.stop: Optional[Stop] = None

    def request(self, kind: StopKind, reason: str) -> None:
        if self.stop is None:
            self.stop = Stop(kind, reason)

    def __call__(self) -> Optional[Stop]:
        return self.stop


class Ending(enum.Enum):
    """How a run ended (the MLflow status it is recorded with)."""

    FINISHED = "finished"
    PRUNED = "pruned"  # recorded KILLED, with the tag trial_state=PRUNED
    INTERRUPTED = "interrupted"  # Ctrl-C or a signal: KILLED
    SERVER_LOST = "server lost"  # its record is kept locally for rps.recover
    FAILED = "failed"

    @property
    def status(self) -> str:
        """The MLflow run status it is recorded with."""
        return {"finished": "FINISHED", "pruned": "KILLED", "interrupted": "KILLED"}.get(self.value, "FAILED")

    @classmethod
    def of(cls, stop: Optional[Stop]) -> "Ending":
        if stop is None:
            return cls.FINISHED
        return cls.PRUNED if stop.kind is StopKind.PRUNED else cls.SERVER_LOST


@dataclass
class Outcome:
    """What training leaves: the trained parts, the test split's predictions, the metrics."""

    backbone: Any  # the trained model's parts: the backbone (the prepared one, or a fine-tuned copy)
    head: Any  # and the head on its feature vector
    image_size: int
    class_names: list[str]
    test_examples: Any  # rps.data.examples.Examples of the test split
    history: dict[str, list[float]]
    probs: np.ndarray  # test split
    labels: np.ndarray
    metrics: dict[str, float]  # OBJECTIVE, OBJECTIVE_LOSS, epochs_trained, test_*
    confusion: np.ndarray
    stop: Optional[Stop] = None
    trained_classifier: Any = None  # the full model, when training built it
    val_examples: Any = None  # Examples of the validation split (each exported file is measured on it)
    train_examples: Any = None  # and of the training split (int8 calibrates on a sample of it)
    val_probs: Optional[np.ndarray] = None  # the exported model's validation predictions
    val_labels: Optional[np.ndarray] = None
    val_groups: Optional[np.ndarray] = None  # the group of each validation example (grouped validation)

    @property
    def objective(self) -> Optional[float]:
        """The validation objective (None for a refit: it has no validation split)."""
        return self.metrics.get(OBJECTIVE)

    @property
    def classifier(self):
        """The full image -> probabilities Keras model (built on first use when training did not:
        tracing the backbone's graph costs seconds a head-only run need not spend)."""
        if self.trained_classifier is None:
            from rps.model.head import build_classifier

            self.trained_classifier = build_classifier(self.backbone, self.head, self.image_size)
        return self.trained_classifier
