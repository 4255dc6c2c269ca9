"""One Hydra job: validate, check resources, then train and evaluate inside an MLflow run.

Config values, the dataset, the backbone's availability and the tracking server are checked
before TensorFlow is imported, so such mistakes cost seconds; the backbone is then loaded (and
its input size checked) before the MLflow run starts. A bad value or a missing mirror leaves
no run behind. Whatever fails inside the run ends it FAILED (KILLED on Ctrl-C / SIGTERM),
keeping the epochs finished so far.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from rps.config import split_sizes, validate
from rps.errors import RpsError
from rps.resources import DatasetSource, check_backbone, locate_dataset

log = logging.getLogger(__name__)


def preflight(cfg: DictConfig) -> DatasetSource:
    """Config values, dataset, split sizes and backbone checks; no TensorFlow, no MLflow run."""
    validate(cfg)
    source = locate_dataset(cfg.dataset)
    if source.n_train is not None:  # unknown only for a dataset still to be downloaded
        split_sizes(cfg.split, source.n_train, source.n_test)
    check_backbone(cfg.backbone.handle)
    return source


def default_run_name(cfg: DictConfig) -> str:
    return (
        f"{cfg.backbone.name} {cfg.split.kind} dropout={cfg.head.dropout} "
        f"{cfg.optimizer.name} lr={cfg.optimizer.lr}"
    )


def run(
    cfg: DictConfig,
    hydra_dir: Optional[Path] = None,
    parent_run_id: Optional[str] = None,
    run_name: Optional[str] = None,
) -> float:
    """Run the experiment ``cfg``; returns the test accuracy.

    ``parent_run_id`` nests the run under a sweep's parent run; then even a job that fails
    before training leaves a FAILED run saying why, so the sweep's summary can list it.
    """
    from rps import tracking

    name = run_name or cfg.run_name or default_run_name(cfg)
    try:
        source = preflight(cfg)
        experiment_id = tracking.setup_experiment(cfg)  # fails fast when a tracking server is down
        from rps.model import load_backbone  # imports TensorFlow

        # Loaded before the run starts: a backbone that cannot load or rejects the image size
        # is a configuration problem, not a failed experiment.
        backbone, feature_dim = load_backbone(cfg.backbone.handle, cfg.backbone.image_size)
    except RpsError as err:
        if parent_run_id:
            tracking.record_failed_run(cfg, name, parent_run_id, err)
        raise
    tags = tracking.environment_tags() | {"dataset": source.name, "backbone_handle": cfg.backbone.handle}
    if parent_run_id:
        tags[tracking.PARENT_TAG] = parent_run_id
    with tracking.tracked_run(experiment_id, name, tags) as active:
        log.info("MLflow run %s in experiment '%s'", active.info.run_id, cfg.experiment_name)
        with tracking.writing_artifacts("the run's config"):  # first write: a bad store fails here
            tracking.log_config(cfg, hydra_dir)
        return _train_and_log(cfg, source, backbone, feature_dim)


def _train_and_log(cfg: DictConfig, source: DatasetSource, backbone, feature_dim: int) -> float:
    from rps import data, plots, tracking
    from rps.pipeline import train_and_evaluate

    out = train_and_evaluate(cfg, source, backbone, feature_dim, tracking.MlflowReporter())
    n = min(cfg.num_samples, len(out.labels))
    with tracking.writing_artifacts("the plots and the trained model"):
        if n:
            images = data.decoded_images(out.test_examples, n)
            tracking.log_figure(plots.sample_predictions(images, out.labels[:n], out.probs[:n], out.class_names),
                                "plots/sample_predictions.png")
        tracking.log_figure(plots.training_curves(out.history), "plots/training_curves.png")
        tracking.log_figure(plots.confusion_matrix(out.confusion, out.class_names), "plots/confusion_matrix.png")
        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp) / "saved_model"
            tracking.log_classifier(out.classifier, out.class_names, cfg.backbone.image_size, saved,
                                    register_as=cfg.register_model)
            if cfg.export.tflite:
                _log_tflite(cfg, saved, out)
    return out.metrics["test_accuracy"]


def _log_tflite(cfg: DictConfig, saved: Path, out) -> None:
    """TFLite model(s) as artifacts, with their test accuracy against the SavedModel's."""
    import mlflow

    from rps import data, export
    from rps.evaluate import evaluate

    test = data.make_dataset(out.test_examples, cfg.backbone.image_size, cfg.batch_size, len(out.class_names))
    reference = out.metrics["test_accuracy"]
    variants = [("model.tflite", False, "tflite")] + (
        [("model_dynamic_range.tflite", True, "tflite_dynamic_range")] if cfg.export.tflite_quantize else [])
    for filename, quantize, metric in variants:
        content = export.to_tflite(saved, quantize)
        probs = export.tflite_predict(content, (images for images, _ in test.as_numpy_iterator()))
        accuracy = evaluate(probs, out.labels, out.class_names)[0]["test_accuracy"]
        gap = abs(accuracy - reference)
        mlflow.log_metrics({f"{metric}_test_accuracy": accuracy, f"{metric}_accuracy_gap": gap})
        mlflow.set_tag(f"{metric}_matches_saved_model", str(gap <= export.MAX_ACCURACY_GAP).lower())
        if gap > export.MAX_ACCURACY_GAP:
            log.warning("%s test accuracy %.4f differs from the SavedModel's %.4f by more than %.1f points",
                        filename, accuracy, reference, 100 * export.MAX_ACCURACY_GAP)
        path = saved.parent / filename
        path.write_bytes(content)
        mlflow.log_artifact(str(path), "tflite")
