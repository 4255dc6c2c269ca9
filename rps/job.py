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
    import mlflow

    from rps import data, model, plots, tracking, train
    from rps.evaluate import evaluate

    train.seed_everything(cfg.seed)
    source = plan.source
    if source.kind == "tfds":
        train_ex, test_ex, class_names, version = data.load_tfds(source)
        mlflow.set_tag("dataset_version", version)
    else:
        train_ex, test_ex, skipped = data.load_image_folder(source, cfg.dataset.skip_corrupt)
        class_names = source.class_names
        mlflow.log_metric("skipped_corrupt_images", skipped)
    sizes = split_sizes(cfg.split, len(train_ex), len(test_ex))  # exact, also after skipping files
    splits = data.split_examples(train_ex, test_ex, cfg.split.kind, sizes, cfg.seed)
    mlflow.log_params({f"data.n_{name}": len(ex) for name, ex in splits.items()})
    mlflow.log_param("data.class_names", ",".join(class_names))

    size, n_classes = cfg.backbone.image_size, len(class_names)
    datasets = {
        name: data.make_dataset(ex, size, cfg.batch_size, n_classes, shuffle_seed=cfg.seed if name == "train" else None)
        for name, ex in splits.items()
    }
    head = model.build_head(feature_dim, n_classes, cfg.head)
    classifier = model.build_classifier(backbone, head, size)
    model.compile_classifier(classifier, cfg.optimizer)
    mlflow.log_params({f"model.{k}_params": v for k, v in model.count_params(classifier).items()})
    mlflow.log_param("model.feature_dim", feature_dim)

    history = train.fit(classifier, datasets["train"], datasets["val"], cfg.epochs, tracking.log_epoch)
    probs, labels = train.predict(classifier, datasets["test"])
    metrics, cm = evaluate(probs, labels, class_names)
    mlflow.log_metrics(metrics)
    log.info("test accuracy %.4f, test loss %.4f", metrics["test_accuracy"], metrics["test_loss"])

    n = min(cfg.num_samples, len(labels))
    if n:
        images = data.decoded_images(splits["test"], n)
        tracking.log_figure(plots.sample_predictions(images, labels[:n], probs[:n], class_names),
                            "plots/sample_predictions.png")
    tracking.log_figure(plots.training_curves(history), "plots/training_curves.png")
    tracking.log_figure(plots.confusion_matrix(cm, class_names), "plots/confusion_matrix.png")
    tracking.log_classifier(classifier, class_names, size)
    return metrics["test_accuracy"]
