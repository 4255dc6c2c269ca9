"""The training loop: one phase of a run (or one fold's head) compiled and fitted epoch by epoch,
reporting each epoch's metrics as it ends and stopping when asked; seeding and memory hygiene."""

from __future__ import annotations

import ctypes
import gc
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from rps.common.errors import interrupt_behind, signals_held
from rps.data.pipelines import Batches, EpochStream
from rps.training.checkpoints import Checkpoints, Saved
from rps.model.head import compile_for_training

keras = tf.keras

# Keras history key -> the metric name logged per epoch, in the order they are logged (validation
# first: MLflow lists a run's metrics in the order they first arrive).
EPOCH_METRICS = {
    "val_accuracy": "val_accuracy",
    "val_loss": "val_loss",
    "accuracy": "train_accuracy",
    "loss": "train_loss",
}

EpochSink = Callable[[dict[str, float], int], None]


def epochs_done(history: dict[str, list[float]]) -> int:
    """How many epochs a history holds (with or without validation)."""
    return len(history.get("train_loss", []))


def epoch_metrics(logs: dict) -> dict[str, float]:
    return {name: float(logs[key]) for key, name in EPOCH_METRICS.items() if key in logs}


class EpochReporter(keras.callbacks.Callback):
    """Hands each finished epoch's metrics to ``sink(metrics, epoch)`` (epochs count from 1), then
    ends training when ``stop()`` returns a :class:`~rps.training.outcome.Stop` (a lost tracking
    server, a pruned trial)."""

    def __init__(self, sink: EpochSink, stop: Callable[[], Optional[object]] = lambda: None):
        super().__init__()
        self.sink, self.stop = sink, stop

    def on_epoch_end(self, epoch, logs=None):
        self.sink(epoch_metrics(logs or {}), epoch + 1)
        if self.stop():
            self.model.stop_training = True


class SafePoints(keras.callbacks.Callback):
    """Raises a Ctrl-C or SIGTERM held during training (``deliver``, from
    :func:`~rps.common.errors.signals_held`) where Keras' own state is consistent: after a batch
    (training or validation), or as the next epoch begins (the finished one checkpointed, reported
    and printed). A signal landing anywhere else (inside TensorFlow's device scopes) could be
    replaced by the error their unbalanced exit raises, and the run would end FAILED, not KILLED."""

    def __init__(self, deliver: Callable[[], None]):
        super().__init__()
        self.deliver = deliver
        self._supports_tf_logs = True  # the batch logs are not read: no conversion to numpy per batch

    def on_train_batch_end(self, batch, logs=None):
        self.deliver()

    on_test_batch_end = on_epoch_begin = on_train_batch_end


_runs_in_this_process = 0


def release_memory() -> None:
    """Free what earlier runs of this process left behind, before a run builds its models.

    A process that runs many runs (a sweep on Hydra's basic launcher, an Optuna study,
    rps.bench) otherwise grows: on the real mirrors a second uncached run in one process peaked
    at 2.39 GB against 2.09 GB for the first; with this, 2.15 GB (2026-11-26, 2-core AMD EPYC).
    A process's first run has nothing to free: it skips the full garbage collection (~0.5 s
    over TensorFlow's and MLflow's objects).
    """
    global _runs_in_this_process
    _runs_in_this_process += 1
    if _runs_in_this_process == 1:
        return
    with signals_held():  # a Ctrl-C raised inside one of the finalizers run here would be lost
        gc.collect()
        keras.backend.clear_session()  # Keras' global graph and layer-name counters
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc keeps freed heap pages unless asked to return them
    except (OSError, AttributeError):  # not glibc: nothing to ask
        pass


def seed_everything(seed: int) -> None:
    """Python, NumPy and TensorFlow seeds, and deterministic TF kernels. Layers draw their random
    numbers (dropout masks) from ``tf.random.Generator`` objects, whose state a checkpoint holds
    (rps.training.checkpoints): a resumed run continues the very same random stream."""
    keras.utils.set_random_seed(seed)
    keras.backend.experimental.enable_tf_random_generator()
    tf.config.experimental.enable_op_determinism()


def optimizer_steps(epochs: int, n_train: int, batch_size: int) -> int:
    """Optimizer updates in ``epochs`` over ``n_train`` examples (the cosine schedule's length)."""
    return epochs * -(-n_train // batch_size)


class Resumable:
    """A Keras callback whose counters a checkpoint keeps: ``state()`` for the checkpoint, and a
    ``restored`` state applied when training (re)starts."""

    STATE: tuple[str, ...] = ()
    restored: Optional[dict] = None

    def state(self) -> dict:
        return {name: float(getattr(self, name)) for name in self.STATE}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for name, value in (self.restored or {}).items():
            setattr(self, name, int(value) if name in ("wait", "best_epoch", "cooldown_counter") else value)


class EarlyStopping(Resumable, keras.callbacks.EarlyStopping):
    STATE = ("wait", "best", "best_epoch")
    restored_best_weights: Optional[list] = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.restored_best_weights is not None:
            self.best_weights = self.restored_best_weights


class ReduceLROnPlateau(Resumable, keras.callbacks.ReduceLROnPlateau):
    STATE = ("wait", "best", "cooldown_counter")


def schedule_callbacks(cfg: DictConfig) -> list[keras.callbacks.Callback]:
    """Early stopping on val_accuracy and the reduce-on-plateau schedule, as configured."""
    callbacks: list[keras.callbacks.Callback] = []
    if cfg.early_stopping.enabled:
        callbacks.append(EarlyStopping(
            monitor="val_accuracy", mode="max", patience=cfg.early_stopping.patience,
            restore_best_weights=cfg.early_stopping.restore_best_weights))
    if cfg.optimizer.schedule == "plateau":
        callbacks.append(ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1))
    return callbacks


@dataclass
class PhaseCheckpoints:
    """Checkpoints of one training phase: where they go, which phase, the history of the phases
    before it, and the checkpoint this phase resumes from (None: it starts afresh)."""

    checkpoints: Checkpoints
    phase: int
    before: dict[str, list[float]] = field(default_factory=dict)
    resume: Optional[Saved] = None

    def phase_history(self) -> dict[str, list[float]]:
        """This phase's part of the resumed checkpoint's history."""
        if self.resume is None:
            return {}
        skip = self.resume.phase1_epochs if self.phase == 2 else 0
        return {k: v[skip:] for k, v in self.resume.history.items()}


class Checkpointing(keras.callbacks.Callback):
    """Writes a checkpoint after every epoch (after the schedule callbacks updated their state)."""

    def __init__(self, plan: PhaseCheckpoints, callbacks: list):
        super().__init__()
        self.plan, self.callbacks = plan, callbacks
        self.history = _joined(plan.before, plan.phase_history())  # every finished epoch, both phases

    def on_epoch_end(self, epoch, logs=None):
        for name, value in epoch_metrics(logs or {}).items():
            self.history.setdefault(name, []).append(value)
        states = {type(cb).__name__: cb.state() for cb in self.callbacks if isinstance(cb, Resumable)}
        best = next((cb.best_weights for cb in self.callbacks if getattr(cb, "best_weights", None) is not None), None)
        phase1 = epoch + 1 if self.plan.phase == 1 else len(next(iter(self.plan.before.values()), []))
        saved = Saved(self.plan.phase, epoch + 1, phase1, self.history, states, bool(self.model.stop_training))
        self.plan.checkpoints.save(saved, self.model, best)


def fit(
    model: keras.Model,
    train: Batches,
    val: Optional[tf.data.Dataset],
    epochs: int,
    sink: EpochSink,
    callbacks: list[keras.callbacks.Callback] = (),
    initial_epoch: int = 0,
    stop: Callable[[], Optional[object]] = lambda: None,
    quiet: bool = False,
) -> dict[str, list[float]]:
    """Train up to epoch ``epochs`` (fewer if early stopping or ``stop()`` ends it), starting after
    ``initial_epoch``, with validation (unless ``val`` is None: a refit on every training example);
    returns the per-epoch metric lists."""
    verbose = 0 if quiet else 1 if sys.stdout.isatty() else 2  # a bar in a terminal, a line per epoch in logs
    steps = None
    if isinstance(train, EpochStream):  # epoch e's batches depend on (seed, e) only: resumable
        train, steps = train.epochs(initial_epoch, epochs), train.steps
    with signals_held(second_at_once=True) as deliver:
        try:
            history = model.fit(train, validation_data=val, epochs=epochs, initial_epoch=initial_epoch,
                                steps_per_epoch=steps, verbose=verbose,  # logged after the checkpoint:
                                callbacks=[*callbacks, EpochReporter(sink, stop), SafePoints(deliver)])
        except RuntimeError as err:  # TensorFlow's scope left unbalanced by a second, immediate Ctrl-C
            interrupt = interrupt_behind(err)  # (tracing re-raises: it can lie a few errors down)
            if interrupt is not None:
                raise interrupt from None
            raise
    return {EPOCH_METRICS[k]: [float(v) for v in vs] for k, vs in history.history.items() if k in EPOCH_METRICS}


def train_phase(model: keras.Model, optimizer_cfg: DictConfig, cfg: DictConfig, datasets: dict, n_train: int,
                end_epoch: int, sink: EpochSink, start_epoch: int = 0,
                stop: Callable[[], Optional[object]] = lambda: None, quiet: bool = False,
                checkpoints: Optional[PhaseCheckpoints] = None) -> dict[str, list[float]]:
    """Compile ``model`` (``optimizer_cfg``; the cosine schedule spans this phase) and train it from
    ``start_epoch`` to ``end_epoch`` on ``datasets["train"]``, validating on ``datasets["val"]``:
    phase 1 (the head, on features or images), phase 2 (fine-tuning) and each fold's head.

    With ``checkpoints``, a checkpoint is written after every epoch, and a phase resumed from one
    continues after its epoch with its weights, optimizer, random generators and callbacks.
    Returns this phase's per-epoch history (resumed epochs included)."""
    steps = optimizer_steps(end_epoch - start_epoch, n_train, cfg.batch_size)
    compile_for_training(model, optimizer_cfg, steps, cfg.label_smoothing)
    callbacks = schedule_callbacks(cfg)
    done = {}
    if checkpoints is not None and checkpoints.resume is not None:
        resumed = checkpoints.resume
        model.optimizer.build(model.trainable_variables)
        best = checkpoints.checkpoints.restore(resumed, model)
        for cb in callbacks:
            if isinstance(cb, Resumable):
                cb.restored = resumed.callbacks.get(type(cb).__name__)
            if isinstance(cb, EarlyStopping):
                cb.restored_best_weights = best
        done, start_epoch = checkpoints.phase_history(), resumed.epoch
        if resumed.stopped:  # early stopping had ended this phase: end it as Keras would have
            if best is not None and cfg.early_stopping.restore_best_weights:
                model.set_weights(best)
            return done
    if checkpoints is not None:
        callbacks.append(Checkpointing(checkpoints, callbacks))
    more = fit(model, datasets["train"], datasets.get("val"), end_epoch, sink, callbacks, start_epoch, stop, quiet)
    return _joined(done, more)


def _joined(first: dict[str, list[float]], then: dict[str, list[float]]) -> dict[str, list[float]]:
    """Two per-epoch histories, one after the other."""
    return {k: list(first.get(k, [])) + list(then.get(k, [])) for k in [*first, *(k for k in then if k not in first)]}


def predict(model: keras.Model, ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and integer labels of every example in a (image, one-hot) dataset."""
    probs, labels = [], []
    for images, onehot in ds:
        probs.append(model(images, training=False).numpy())
        labels.append(np.argmax(onehot.numpy(), axis=1))
    return np.concatenate(probs), np.concatenate(labels)
