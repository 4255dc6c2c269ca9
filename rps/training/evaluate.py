"""Metrics of a split from predicted probabilities (pure NumPy, one pass of the model)."""

from __future__ import annotations

import re

import numpy as np

EPSILON = 1e-7  # Keras clips probabilities the same way in CategoricalCrossentropy


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """``cm[actual, predicted]`` counts."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (labels, predicted), 1)
    return cm


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (a split's ``*_loss``)."""
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], EPSILON, 1.0))))


def metric_name(text: str) -> str:
    """A class name made safe for an MLflow metric key."""
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", text)


def evaluate(
    probs: np.ndarray, labels: np.ndarray, class_names: list[str], split: str = "test"
) -> tuple[dict[str, float], np.ndarray]:
    """``<split>_accuracy``, ``<split>_loss`` (cross-entropy) and per-class precision/recall,
    plus the confusion matrix."""
    predicted = probs.argmax(axis=1)
    cm = confusion_matrix(labels, predicted, len(class_names))
    metrics = {
        f"{split}_accuracy": float(np.mean(predicted == labels)),
        f"{split}_loss": nll(probs, labels),
    }
    for c, name in enumerate(class_names):
        predicted_c, actual_c = cm[:, c].sum(), cm[c, :].sum()
        metrics[f"{split}_precision_{metric_name(name)}"] = float(cm[c, c] / predicted_c) if predicted_c else 0.0
        metrics[f"{split}_recall_{metric_name(name)}"] = float(cm[c, c] / actual_c) if actual_c else 0.0
    return metrics, cm
