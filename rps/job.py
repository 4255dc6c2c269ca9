"""One Hydra job: validate, check resources, then train and evaluate inside an MLflow run.

Config values, the dataset, the backbone's availability and the tracking server are checked
before TensorFlow is imported, so such mistakes cost seconds; the backbone is then loaded (and
its input size checked) before the MLflow run starts. A bad value or a missing mirror leaves
no run behind. Whatever fails inside the run ends it FAILED (KILLED on Ctrl-C / SIGTERM),
keeping the epochs finished so far.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from rps.config import SplitSizes, split_sizes, validate
from rps.resources import DatasetSource, check_backbone, locate_dataset

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What pre-flight established: the dataset found and, when its size is known, the split."""

    source: DatasetSource
    sizes: Optional[SplitSizes]


def preflight(cfg: DictConfig) -> Plan:
    """Config values, dataset and backbone checks; no TensorFlow, no MLflow run."""
    validate(cfg)
    source = locate_dataset(cfg.dataset)
    sizes = None
    if source.n_train is not None:
        sizes = split_sizes(cfg.split, source.n_train, source.n_test)
    check_backbone(cfg.backbone.handle)
    return Plan(source, sizes)


def default_run_name(cfg: DictConfig) -> str:
    return (
        f"{cfg.backbone.name} {cfg.split.kind} dropout={cfg.head.dropout} "
        f"{cfg.optimizer.name} lr={cfg.optimizer.lr}"
    )


def run(cfg: DictConfig, hydra_dir: Optional[Path] = None) -> float:
    """Run the experiment ``cfg``; returns the test accuracy."""
    plan = preflight(cfg)
    from rps import tracking

    experiment_id = tracking.setup_experiment(cfg)  # fails fast when a tracking server is down
    from rps.model import load_backbone  # imports TensorFlow

    # Loaded before the run starts: a backbone that cannot load or rejects the image size
    # is a configuration problem, not a failed experiment.
    backbone, feature_dim = load_backbone(cfg.backbone.handle, cfg.backbone.image_size)
    tags = tracking.environment_tags() | {
        "dataset": plan.source.name,
        "backbone_handle": cfg.backbone.handle,
    }
    with tracking.tracked_run(experiment_id, cfg.run_name or default_run_name(cfg), tags) as active:
        log.info("MLflow run %s in experiment '%s'", active.info.run_id, cfg.experiment_name)
        tracking.log_config(cfg, hydra_dir)
        return _train_and_log(cfg, plan, backbone, feature_dim)


def _train_and_log(cfg: DictConfig, plan: Plan, backbone, feature_dim: int) -> float:
    from rps import data, plots, tracking
    from rps.pipeline import train_and_evaluate

    out = train_and_evaluate(cfg, plan.source, backbone, feature_dim, tracking.MlflowReporter())
    n = min(cfg.num_samples, len(out.labels))
    if n:
        images = data.decoded_images(out.test_examples, n)
        tracking.log_figure(plots.sample_predictions(images, out.labels[:n], out.probs[:n], out.class_names),
                            "plots/sample_predictions.png")
    tracking.log_figure(plots.training_curves(out.history), "plots/training_curves.png")
    tracking.log_figure(plots.confusion_matrix(out.confusion, out.class_names), "plots/confusion_matrix.png")
    tracking.log_classifier(out.classifier, out.class_names, cfg.backbone.image_size)
    return out.metrics["test_accuracy"]
