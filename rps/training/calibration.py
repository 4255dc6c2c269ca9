"""How far a run's probabilities can be trusted, and where it goes wrong (pure NumPy).

- :func:`expected_calibration_error`: the gap between confidence and accuracy, averaged over
  equal-width confidence bins weighted by their share of examples (Guo et al. 2017).
- :func:`fit_temperature`: temperature scaling, one scalar ``T`` dividing the log-probabilities,
  fitted on the validation split only by minimising its negative log-likelihood over a fixed
  log-spaced grid (deterministic; no optimiser to tune). ``T > 1`` softens an overconfident model.
- :func:`confused_pairs` and :func:`worst`: the most-confused (actual, predicted) classes and the
  examples the model got most wrong (lowest probability on the true class).
"""

from __future__ import annotations

import numpy as np

from rps.training.evaluate import EPSILON, nll

BINS = 10
TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 601))  # ~1% apart


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> list[dict]:
    """Per confidence bin ``(lo, hi]`` (the first also takes 0): its count, mean confidence and accuracy."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": n,
                    "confidence": float(confidence[inside].mean()) if n else None,
                    "accuracy": float(correct[inside].mean()) if n else None})
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Sum over bins of (share of examples) x |accuracy - mean confidence|; 0 is perfectly calibrated."""
    total = len(labels)
    if total == 0:
        return float("nan")
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"])
                     for b in reliability(probs, labels, bins) if b["count"]))


def scaled(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T): the same ranking (and predicted class), confidence softened for T > 1."""
    logits = np.log(np.clip(probs, EPSILON, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature on :data:`TEMPERATURES` minimising the NLL of ``probs`` (validation only);
    1.0 when there is nothing to fit on or no temperature does better."""
    if len(labels) == 0:
        return 1.0
    losses = np.array([nll(scaled(probs, t), labels) for t in TEMPERATURES])
    best = int(np.argmin(losses))
    return float(TEMPERATURES[best]) if losses[best] < nll(probs, labels) else 1.0


def confused_pairs(confusion: np.ndarray, class_names: list[str], top: int = 3) -> list[dict]:
    """The off-diagonal cells with the most examples: ``{"actual", "predicted", "count"}``, most first."""
    cells = [(int(confusion[i, j]), i, j) for i in range(len(class_names)) for j in range(len(class_names))
             if i != j and confusion[i, j] > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [{"actual": class_names[i], "predicted": class_names[j], "count": n} for n, i, j in cells[:top]]


def worst(probs: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of the misclassified examples, lowest probability on the true class first (at most ``count``)."""
    true_prob = probs[np.arange(len(labels)), labels]
    wrong = np.flatnonzero(probs.argmax(axis=1) != labels)
    return wrong[np.argsort(true_prob[wrong], kind="stable")][:count]
