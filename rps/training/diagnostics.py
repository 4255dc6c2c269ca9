"""Calibration and error analysis of every run, from the exported model's validation and test
predictions (rps.training.calibration does the arithmetic).

Logged: metrics ``val_ece``, ``test_ece``, ``temperature`` (fitted on validation only),
``val_loss_calibrated``, ``test_ece_calibrated`` and ``test_loss_calibrated`` (the validation-fitted
temperature applied to test, reported only); :data:`CALIBRATION` (the reliability bins of each
split before and after scaling), :data:`ERRORS` (the most-confused class pairs and the worst
mistakes of each split), a reliability diagram and a gallery of the worst mistakes; with grouped
validation, :data:`GROUPS` (validation accuracy of each held-out group, worst first) and the metric
``val_group_accuracy_min``.
"""

from __future__ import annotations

import json

import numpy as np

from rps.data import pipelines
from rps.training import calibration, plots
from rps.training.evaluate import confusion_matrix
from rps.training.outcome import Outcome
from rps.training.report import Reporter

CALIBRATION, ERRORS, GROUPS = "eval/calibration.json", "eval/errors.json", "eval/val_groups.json"
RELIABILITY, GALLERY = "plots/reliability.png", "plots/worst_errors.png"
WORST = 6  # images per split in the gallery (errors.json lists up to 20)


def _has_validation(out: Outcome) -> bool:
    return out.val_probs is not None and len(out.val_labels) > 0


def report_calibration(out: Outcome, report: Reporter) -> float:
    """ECE of validation and test, the temperature fitted on validation and what it does to both;
    returns the temperature. Without validation (a refit): test's ECE only, no temperature (1.0)."""
    if not _has_validation(out):
        bins, ece = calibration.reliability(out.probs, out.labels), calibration.expected_calibration_error(out.probs, out.labels)
        report.metrics({"test_ece": ece})
        report.text(json.dumps({"temperature": None, "fitted_on": "nothing: no validation split", "bins": calibration.BINS,
                                "test": {"ece": ece, "nll": calibration.nll(out.probs, out.labels), "reliability": bins}},
                               indent=1), CALIBRATION)
        report.figure(plots.reliability_diagram({"test": (bins, ece)}), RELIABILITY)
        return 1.0
    splits = {"val": (out.val_probs, out.val_labels), "test": (out.probs, out.labels)}
    temperature = calibration.fit_temperature(*splits["val"])
    record, curves = {"temperature": temperature, "fitted_on": "val", "bins": calibration.BINS}, {}
    for split, (probs, labels) in splits.items():
        for name, p in (("", probs), ("_calibrated", calibration.scaled(probs, temperature))):
            bins = calibration.reliability(p, labels)
            ece = calibration.expected_calibration_error(p, labels)
            record[f"{split}{name}"] = {"ece": ece, "nll": calibration.nll(p, labels), "reliability": bins}
            curves[f"{split}{' (T-scaled)' if name else ''}"] = (bins, ece)
    report.metrics({"val_ece": record["val"]["ece"], "test_ece": record["test"]["ece"], "temperature": temperature,
                    "val_loss_calibrated": record["val_calibrated"]["nll"],
                    "test_ece_calibrated": record["test_calibrated"]["ece"],
                    "test_loss_calibrated": record["test_calibrated"]["nll"]})
    report.text(json.dumps(record, indent=1), CALIBRATION)
    report.figure(plots.reliability_diagram(curves), RELIABILITY)
    return temperature


def report_errors(out: Outcome, report: Reporter) -> None:
    """The most-confused class pairs and the worst mistakes of validation and test, as JSON and as
    a gallery of images (true class, predicted class, both probabilities)."""
    splits = {"val": (out.val_examples, out.val_probs, out.val_labels),
              "test": (out.test_examples, out.probs, out.labels)}
    if not _has_validation(out):
        del splits["val"]
    record, rows = {}, []
    for split, (examples, probs, labels) in splits.items():
        worst, predicted = calibration.worst(probs, labels, 20), probs.argmax(axis=1)
        cm = confusion_matrix(labels, predicted, len(out.class_names))
        record[split] = {
            "examples": int(len(labels)), "errors": int((predicted != labels).sum()),
            "most_confused": calibration.confused_pairs(cm, out.class_names),
            "worst": [{"index": int(i), "actual": out.class_names[labels[i]],
                       "predicted": out.class_names[int(predicted[i])],
                       "p_actual": round(float(probs[i, labels[i]]), 4),
                       "p_predicted": round(float(probs[i].max()), 4)} for i in worst]}
        shown = worst[:WORST]
        images = pipelines.decoded_images(examples.take(shown), len(shown)) if len(shown) else []
        rows.append((split, images, labels[shown], probs[shown]))
    report.text(json.dumps(record, indent=1), ERRORS)
    report.figure(plots.error_gallery(rows, out.class_names), GALLERY)


def group_accuracy(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray, class_names: list[str]) -> list[dict]:
    """Accuracy on each group's examples, worst first (ties: the larger group first)."""
    correct = probs.argmax(axis=1) == labels
    rows = []
    for name in np.unique(groups):
        members = groups == name
        classes = sorted({class_names[c] for c in labels[members]})
        rows.append({"group": str(name), "examples": int(members.sum()), "classes": classes,
                     "accuracy": round(float(correct[members].mean()), 4)})
    return sorted(rows, key=lambda r: (r["accuracy"], -r["examples"]))


def report_groups(out: Outcome, report: Reporter) -> None:
    """Validation accuracy of each held-out group: a mean over groups hides a hand the model fails."""
    rows = group_accuracy(out.val_probs, out.val_labels, out.val_groups, out.class_names)
    report.metrics({"val_group_accuracy_min": rows[0]["accuracy"]})
    report.text(json.dumps(rows, indent=1), GROUPS)


def report_diagnostics(out: Outcome, report: Reporter) -> float:
    """Both (a refit, which has no validation, reports them for test alone); returns the
    temperature fitted on validation (1.0 without validation predictions)."""
    temperature = report_calibration(out, report)
    report_errors(out, report)
    if out.val_groups is not None:
        report_groups(out, report)
    return temperature
