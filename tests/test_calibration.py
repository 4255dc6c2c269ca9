"""Calibration and error analysis (rps.training.calibration, rps.training.diagnostics) on
constructed predictions with known answers."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from rps.training import calibration
from rps.training.diagnostics import CALIBRATION, ERRORS, GALLERY, RELIABILITY, report_diagnostics
from rps.training.report import Reporter

CLASSES = ["rock", "paper", "scissors"]


def _probs(confidence: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Rows with ``confidence`` on ``predicted`` and the rest shared by the other two classes."""
    p = np.repeat(((1 - confidence) / 2)[:, None], 3, axis=1)
    p[np.arange(len(p)), predicted] = confidence
    return p


def _sampled(n: int, sharpness: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """A model whose probabilities are the truth, then sharpened: labels drawn from softmax(z),
    predictions softmax(sharpness * z) (sharpness > 1: overconfident)."""
    z = rng.normal(0, 1.5, size=(n, 3))
    true = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(3, p=row) for row in true])
    sharp = np.exp(sharpness * z)
    return sharp / sharp.sum(axis=1, keepdims=True), labels


def test_ece_is_the_gap_between_confidence_and_accuracy():
    predicted = np.zeros(100, dtype=int)
    labels = np.where(np.arange(100) < 50, 0, 1)  # half right
    assert calibration.expected_calibration_error(_probs(np.full(100, 0.9), predicted), labels) == pytest.approx(0.4)
    assert calibration.expected_calibration_error(_probs(np.full(100, 0.5), predicted), labels) == pytest.approx(0.0)
    bins = calibration.reliability(_probs(np.full(100, 0.9), predicted), labels)
    assert [b["count"] for b in bins] == [0] * 8 + [100, 0], "0.9 falls in (0.8, 0.9]"
    assert sum(b["count"] for b in calibration.reliability(*_sampled(500, 1.0, np.random.default_rng(0)))) == 500


def test_temperature_fitted_on_an_overconfident_model_softens_it_and_lowers_its_nll():
    rng = np.random.default_rng(1)
    probs, labels = _sampled(3000, 4.0, rng)
    t = calibration.fit_temperature(probs, labels)
    fixed = calibration.scaled(probs, t)
    assert 3.0 < t < 5.5, "undoes the 4x sharpening"
    assert calibration.nll(fixed, labels) < 0.8 * calibration.nll(probs, labels)
    assert calibration.expected_calibration_error(fixed, labels) < calibration.expected_calibration_error(probs, labels) / 2
    assert (fixed.argmax(1) == probs.argmax(1)).all(), "the same predictions, only the confidence changes"
    honest, honest_labels = _sampled(3000, 1.0, rng)
    assert 0.85 < calibration.fit_temperature(honest, honest_labels) < 1.2, "a calibrated model is left about as it is"
    assert calibration.fit_temperature(probs[:0], labels[:0]) == 1.0


def test_confused_pairs_and_worst_mistakes():
    cm = np.array([[5, 3, 0], [1, 4, 0], [0, 3, 2]])
    assert calibration.confused_pairs(cm, CLASSES, top=2) == [{"actual": "rock", "predicted": "paper", "count": 3},
                                                              {"actual": "scissors", "predicted": "paper", "count": 3}]
    probs = _probs(np.array([0.9, 0.6, 0.8, 0.7]), np.array([0, 1, 1, 2]))
    labels = np.array([0, 0, 0, 2])  # rows 1 and 2 are wrong; row 2 puts 0.1 on its true class
    assert calibration.worst(probs, labels, 5).tolist() == [2, 1]
    assert calibration.worst(probs, labels, 1).tolist() == [2]


class Capture(Reporter):
    """A Reporter that also keeps the figure sizes (what MlflowReporter would upload) and reads its JSON texts."""

    def __init__(self):
        super().__init__()
        self.sizes = {}

    def json(self, path):
        return json.loads(self.texts[path])

    def figure(self, fig, path, compare_as=None, step=0):
        self.sizes[path] = tuple(fig.get_size_inches())
        super().figure(fig, path, compare_as, step)


def _examples(labels: np.ndarray):
    from rps.data.examples import Examples

    encoded = []
    for i in range(len(labels)):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), (40 * i % 255, 80, 120)).save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    return Examples(np.array(encoded, dtype=object), labels.astype(np.int64))


def test_every_run_reports_calibration_and_its_worst_mistakes():
    from rps.training.outcome import Outcome

    rng = np.random.default_rng(2)
    val_probs, val_labels = _sampled(40, 4.0, rng)
    test_probs, test_labels = _sampled(30, 4.0, rng)
    out = Outcome(None, None, 224, CLASSES, _examples(test_labels), {}, test_probs, test_labels, {}, None,
                  val_examples=_examples(val_labels), val_probs=val_probs, val_labels=val_labels)
    report = Capture()
    report_diagnostics(out, report)
    metrics = report.recorded["metrics"]
    assert {CALIBRATION, ERRORS, RELIABILITY, GALLERY} <= set(report.artifacts)
    assert metrics["temperature"] > 1 and metrics["val_loss_calibrated"] < calibration.nll(val_probs, val_labels)
    assert metrics["test_ece"] == pytest.approx(calibration.expected_calibration_error(test_probs, test_labels))
    errors = report.json(ERRORS)
    for split, (probs, labels) in {"val": (val_probs, val_labels), "test": (test_probs, test_labels)}.items():
        wrong = int((probs.argmax(1) != labels).sum())
        assert errors[split]["errors"] == wrong and len(errors[split]["worst"]) == min(wrong, 20)
        p_actual = [w["p_actual"] for w in errors[split]["worst"]]
        assert p_actual == sorted(p_actual) and all(w["actual"] != w["predicted"] for w in errors[split]["worst"])
    assert report.sizes[GALLERY][1] > 2 * 2.5, "one row of images per split"
    assert len(report.json(CALIBRATION)["val"]["reliability"]) == calibration.BINS


def test_a_refit_reports_test_calibration_and_mistakes_without_a_temperature():
    from rps.training.outcome import Outcome

    rng = np.random.default_rng(3)
    test_probs, test_labels = _sampled(30, 4.0, rng)
    out = Outcome(None, None, 224, CLASSES, _examples(test_labels), {}, test_probs, test_labels, {}, None,
                  val_examples=_examples(test_labels[:0]), val_probs=None, val_labels=None)  # no validation split
    report = Capture()
    assert report_diagnostics(out, report) == 1.0
    metrics = report.recorded["metrics"]
    assert {CALIBRATION, ERRORS, RELIABILITY, GALLERY} <= set(report.artifacts)
    assert metrics["test_ece"] == pytest.approx(calibration.expected_calibration_error(test_probs, test_labels))
    assert "temperature" not in metrics and report.json(CALIBRATION)["temperature"] is None
    assert set(report.json(ERRORS)) == {"test"}
    assert report.json(ERRORS)["test"]["errors"] == int((test_probs.argmax(1) != test_labels).sum())
