"""The training loop: one phase of a run (or one fold's head) compiled and fitted epoch by epoch,
reporting each epoch's metrics as it ends and stopping when asked; seeding and memory hygiene."""

from __future__ import annotations

import ctypes
import gc
import sys
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from rps.common.errors import signals_held
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


def release_memory() -> None:
    """Free what earlier runs of this process left behind, before a run builds its models.

    A process that runs many runs (a sweep on Hydra's basic launcher, an Optuna study,
    rps.bench) otherwise grows: on the real mirrors a second uncached run in one process peaked
    at 2.39 GB against 2.09 GB for the first; with this, 2.15 GB (2026-11-26, 2-core AMD EPYC).
    """
    with signals_held():  # a Ctrl-C raised inside one of the finalizers run here would be lost
        gc.collect()
        keras.backend.clear_session()  # Keras' global graph and layer-name counters
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc keeps freed heap pages unless asked to return them
    except (OSError, AttributeError):  # not glibc: nothing to ask
        pass


def seed_everything(seed: int) -> None:
    """Python, NumPy and TensorFlow seeds, and deterministic TF kernels."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def optimizer_steps(epochs: int, n_train: int, batch_size: int) -> int:
    """Optimizer updates in ``epochs`` over ``n_train`` examples (the cosine schedule's length)."""
    return epochs * -(-n_train // batch_size)


def schedule_callbacks(cfg: DictConfig) -> list[keras.callbacks.Callback]:
    """Early stopping on val_accuracy and the reduce-on-plateau schedule, as configured."""
    callbacks: list[keras.callbacks.Callback] = []
    if cfg.early_stopping.enabled:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=cfg.early_stopping.patience,
            restore_best_weights=cfg.early_stopping.restore_best_weights))
    if cfg.optimizer.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1))
    return callbacks


def fit(
    model: keras.Model,
    train: tf.data.Dataset,
    val: tf.data.Dataset,
    epochs: int,
    sink: EpochSink,
    callbacks: list[keras.callbacks.Callback] = (),
    initial_epoch: int = 0,
    stop: Callable[[], Optional[object]] = lambda: None,
    quiet: bool = False,
) -> dict[str, list[float]]:
    """Train up to epoch ``epochs`` (fewer if early stopping or ``stop()`` ends it), starting after
    ``initial_epoch``, with validation; returns the per-epoch metric lists."""
    verbose = 0 if quiet else 1 if sys.stdout.isatty() else 2  # a bar in a terminal, a line per epoch in logs
    history = model.fit(train, validation_data=val, epochs=epochs, initial_epoch=initial_epoch,
                        callbacks=[EpochReporter(sink, stop), *callbacks], verbose=verbose)
    return {EPOCH_METRICS[k]: [float(v) for v in vs] for k, vs in history.history.items() if k in EPOCH_METRICS}


def train_phase(model: keras.Model, optimizer_cfg: DictConfig, cfg: DictConfig, datasets: dict, n_train: int,
                end_epoch: int, sink: EpochSink, start_epoch: int = 0,
                stop: Callable[[], Optional[object]] = lambda: None, quiet: bool = False) -> dict[str, list[float]]:
    """Compile ``model`` (``optimizer_cfg``; the cosine schedule spans this phase) and train it from
    ``start_epoch`` to ``end_epoch`` on ``datasets["train"]``, validating on ``datasets["val"]``:
    phase 1 (the head, on features or images), phase 2 (fine-tuning) and each fold's head."""
    steps = optimizer_steps(end_epoch - start_epoch, n_train, cfg.batch_size)
    compile_for_training(model, optimizer_cfg, steps, cfg.label_smoothing)
    return fit(model, datasets["train"], datasets["val"], end_epoch, sink, schedule_callbacks(cfg), start_epoch,
               stop, quiet)


def predict(model: keras.Model, ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and integer labels of every example in a (image, one-hot) dataset."""
    probs, labels = [], []
    for images, onehot in ds:
        probs.append(model(images, training=False).numpy())
        labels.append(np.argmax(onehot.numpy(), axis=1))
    return np.concatenate(probs), np.concatenate(labels)
