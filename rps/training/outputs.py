"""What a finished run leaves behind: plots, the trained model (saved once), its TFLite formats
measured (rps.training.exports).

Everything goes through the run's :class:`~rps.report.Reporter`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from omegaconf import DictConfig

from rps.training import diagnostics, exports, plots

from rps.data import pipelines
from rps.model.export import ExportedClassifier, model_info
from rps.training.pipeline import Outcome
from rps.training.outcome import PREDICTIONS, SAMPLES, THUMBNAIL
from rps.training.report import Reporter
from rps.model.export import INFO_FILE

log = logging.getLogger(__name__)


def report_predictions(out: Outcome, images: list[np.ndarray], report: Reporter) -> None:
    """Every test example's label, predicted class and confidence (:data:`PREDICTIONS`, with the
    test split's digest), and the first ones' images as one small strip (:data:`SAMPLES`): a
    sweep's parent draws its children's confusion matrices and predictions from these, side by side."""
    from PIL import Image

    predicted = out.probs.argmax(axis=1)
    record = {"class_names": out.class_names, "test_digest": out.test_examples.digest()[:12],
              "labels": out.labels.tolist(), "predicted": predicted.tolist(),
              "confidence": [round(float(p[c]), 4) for p, c in zip(out.probs, predicted)], "samples": len(images)}
    report.text(json.dumps(record), PREDICTIONS)
    if not images:
        return
    strip = Image.new("RGB", (THUMBNAIL * len(images), THUMBNAIL))
    for i, image in enumerate(images):
        strip.paste(Image.fromarray(image).convert("RGB").resize((THUMBNAIL, THUMBNAIL)), (i * THUMBNAIL, 0))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(SAMPLES).name
        strip.save(path, quality=85)
        report.files(path, str(Path(SAMPLES).parent))


def planned_epochs(cfg: DictConfig) -> int:
    """The epochs a run is configured to train (both phases when it fine-tunes)."""
    return cfg.epochs + (cfg.backbone.fine_tune_epochs if cfg.backbone.trainable else 0)


def report_outputs(cfg: DictConfig, out: Outcome, report: Reporter) -> None:
    """The sample-prediction grid, training curves, confusion matrix, calibration and the worst
    mistakes (rps.training.diagnostics), and the trained model.

    The two images a sweep compares are also logged as MLflow images at the step of the run's
    planned last epoch (not the one it stopped at): the chart view shows one step for all runs,
    so runs that early stopping ended at different epochs still appear side by side.
    """
    n, step = min(cfg.num_samples, len(out.labels)), planned_epochs(cfg)
    images = pipelines.decoded_images(out.test_examples, n) if n else []
    if n:
        report.figure(plots.sample_predictions(images, out.labels[:n], out.probs[:n], out.class_names),
                      "plots/sample_predictions.png", compare_as="sample_predictions", step=step)
    report_predictions(out, images, report)
    report.figure(plots.training_curves(out.history), "plots/training_curves.png")
    report.figure(plots.confusion_matrix(out.confusion, out.class_names), "plots/confusion_matrix.png",
                  compare_as="confusion_matrix", step=step)
    temperature = diagnostics.report_diagnostics(out, report)
    if not (cfg.export.model or cfg.export.formats):
        return
    size, temperature = cfg.backbone.image_size, temperature if cfg.export.calibrate else 1.0
    info = model_info(out.class_names, size, cfg.backbone.name, temperature)
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "saved_model"
        ExportedClassifier(out.backbone, out.head, out.class_names, size, temperature).save(str(saved))  # the one save
        (saved / INFO_FILE).write_text(json.dumps(info, indent=2))
        if cfg.export.model:
            report.model(saved, info, cfg.register_model)
        if cfg.export.formats:
            exports.report_exports(cfg, saved, info, out, report)
