"""What a finished run leaves behind: plots, the trained model (saved once), its TFLite formats
measured (rps.training.exports).

Everything goes through the run's :class:`~rps.report.Reporter`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from rps.training import exports, plots

from rps.data import pipelines
from rps.model.export import ExportedClassifier
from rps.training.pipeline import Outcome
from rps.training.report import Reporter
from rps.model.export import INFO_FILE

log = logging.getLogger(__name__)


def model_info(class_names: list[str], image_size: int, backbone: str = "backbone") -> dict:
    """The exported model's metadata (in its MLflow metadata and in ``rps_model.json``)."""
    return {
        "class_names": list(class_names),
        "image_size": image_size,
        "backbone": backbone,
        "input": "images: float32 RGB in [0, 1] of shape [batch, {0}, {0}, 3], uint8 arrays of any size, "
                 "or encoded JPEG/PNG/BMP/GIF (bytes or base64 text)".format(image_size),
        "output": "float32 class probabilities, shape [batch, n_classes], in class_names order",
    }


def report_outputs(cfg: DictConfig, out: Outcome, report: Reporter) -> None:
    """The sample-prediction grid, training curves, confusion matrix and the trained model."""
    n, step = min(cfg.num_samples, len(out.labels)), len(out.history["val_accuracy"])
    if n:
        images = pipelines.decoded_images(out.test_examples, n)
        report.figure(plots.sample_predictions(images, out.labels[:n], out.probs[:n], out.class_names),
                      "plots/sample_predictions.png", compare_as="sample_predictions", step=step)
    report.figure(plots.training_curves(out.history), "plots/training_curves.png")
    report.figure(plots.confusion_matrix(out.confusion, out.class_names), "plots/confusion_matrix.png",
                  compare_as="confusion_matrix", step=step)
    if not (cfg.export.model or cfg.export.formats):
        return
    size = cfg.backbone.image_size
    info = model_info(out.class_names, size, cfg.backbone.name)
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "saved_model"
        ExportedClassifier(out.backbone, out.head, out.class_names, size).save(str(saved))  # the one save
        (saved / INFO_FILE).write_text(json.dumps(info, indent=2))
        if cfg.export.model:
            report.model(saved, info, cfg.register_model)
        if cfg.export.formats:
            exports.report_exports(cfg, saved, info, out, report)
