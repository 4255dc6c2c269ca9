"""Test metrics computed from probabilities must match Keras's own definitions."""

import numpy as np
import pytest

from rps.training.evaluate import confusion_matrix, evaluate


def test_confusion_matrix_counts_actual_by_predicted():
    cm = confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_metrics_match_keras_accuracy_and_loss():
    import rps  # noqa: F401
    import tensorflow as tf

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 3, size=50)
    metrics, cm = evaluate(probs.astype(np.float32), labels, ["rock", "paper", "scissors"])
    onehot = tf.one_hot(labels, 3)
    keras_loss = tf.keras.losses.CategoricalCrossentropy()(onehot, probs).numpy()
    keras_acc = tf.keras.metrics.categorical_accuracy(onehot, probs).numpy().mean()
    assert metrics["test_loss"] == pytest.approx(keras_loss, rel=1e-5)
    assert metrics["test_accuracy"] == pytest.approx(keras_acc)
    assert cm.sum() == 50


def test_per_class_precision_and_recall():
    probs = np.eye(3)[[0, 1, 1, 2, 0]]  # predicted 0 1 1 2 0
    metrics, _ = evaluate(probs, np.array([0, 0, 1, 2, 2]), ["rock", "paper", "scissors"])
    assert metrics["test_precision_rock"] == 0.5 and metrics["test_recall_rock"] == 0.5
    assert metrics["test_precision_paper"] == 0.5 and metrics["test_recall_paper"] == 1.0
    assert metrics["test_precision_scissors"] == 1.0 and metrics["test_recall_scissors"] == 0.5
