"""The experiment's computation, free of any tracking: data -> split -> (features) -> fit -> evaluate.

:func:`train_and_evaluate` reports what it learns through a :class:`Reporter` as soon as it
knows it (so a crash keeps what came before); ``rps.job`` passes one that writes to MLflow,
the benchmark one that only records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import DictConfig, OmegaConf

from rps import data, features, model, train
from rps.config import augmented, split_sizes
from rps.evaluate import evaluate
from rps.report import Reporter
from rps.resources import DatasetSource, backbone_dir

log = logging.getLogger(__name__)

# Why phase 2 never uses the feature cache (logged as the run's tag `feature_cache_fine_tune`).
PHASE2_CACHE = "off: fine-tuning trains the backbone, so its features change every step"


@dataclass
class Outcome:
    classifier: Any  # the full image -> probabilities Keras model
    class_names: list[str]
    test_examples: data.Examples
    history: dict[str, list[float]]
    probs: np.ndarray
    labels: np.ndarray
    metrics: dict[str, float]
    confusion: np.ndarray


def load_examples(cfg: DictConfig, source: DatasetSource, report: Reporter) -> tuple[data.Examples, data.Examples, list[str]]:
    if source.kind == "tfds":
        train_ex, test_ex, class_names, version = data.load_tfds(source)
        report.tags({"dataset_version": version})
        return train_ex, test_ex, class_names
    train_ex, test_ex, skipped = data.load_image_folder(source, cfg.dataset.skip_corrupt)
    report.metrics({"skipped_corrupt_images": skipped})
    return train_ex, test_ex, source.class_names


def cache_decision(cfg: DictConfig) -> tuple[bool, str]:
    """Whether the head trains on cached backbone features, and why (``validate`` has already
    rejected ``feature_cache.enabled=true`` where caching is invalid).

    Only phase 1 can use the cache: with ``backbone.trainable=true`` the head first trains on
    the frozen backbone, whose features are exactly the cached ones; phase 2 (fine-tuning)
    changes the backbone every step, so it always runs on images.
    """
    if augmented(cfg, 1):
        return False, "off: training images are augmented (augment=basic)"
    if cfg.feature_cache.enabled is False:
        return False, "off: feature_cache.enabled=false"
    if cfg.backbone.trainable:
        return True, "on for phase 1: the backbone is still frozen and the head's images are not augmented"
    return True, "on: frozen backbone, no augmentation"


def _cached_pool_features(cfg, pool: data.Examples, backbone, feature_dim: int, report: Reporter) -> np.ndarray:
    size = cfg.backbone.image_size
    key = features.cache_key(
        pool.images, pool.labels, pool.from_files, cfg.backbone.handle, backbone_dir(cfg.backbone.handle), size
    )

    def compute() -> np.ndarray:
        images = data.make_dataset(pool, size, cfg.feature_cache.batch_size, 1).map(lambda x, y: x)
        return model.extract_features(backbone, images, len(pool))

    cache_dir = Path(cfg.feature_cache.dir).expanduser() if cfg.feature_cache.dir else None
    meta = {"handle": cfg.backbone.handle, "image_size": size, "examples": len(pool)}
    result = features.cached_features(key, pool.labels, feature_dim, compute, cache_dir, meta)
    log.info("Feature cache %s: %s", result.status, result.path)
    report.tags({"feature_cache": result.status, "feature_cache_key": key})
    report.metrics({"feature_extraction_seconds": result.seconds})
    return result.features


def _image_datasets(cfg, pool: data.Examples, index: dict, n_classes: int, augment_train: bool) -> dict[str, Any]:
    augment = data.augmenter(cfg.augment, cfg.seed) if augment_train else None
    return {
        name: data.make_dataset(pool.take(i), cfg.backbone.image_size, cfg.batch_size, n_classes,
                                shuffle_seed=cfg.seed if name == "train" else None,
                                augment=augment if name == "train" else None)
        for name, i in index.items()
    }


def _optimizer_steps(epochs: int, n_train: int, batch_size: int) -> int:
    """Optimizer updates in ``epochs`` over ``n_train`` examples (the cosine schedule's length)."""
    return epochs * -(-n_train // batch_size)


def _fine_tune(cfg, classifier, backbone, datasets, n_train: int, done: int, history: dict, report: Reporter) -> dict:
    """Phase 2: unfreeze the backbone's top and train the whole model at ``optimizer.fine_tune_lr``."""
    unfrozen = backbone.unfreeze_top(cfg.backbone.fine_tune_from)
    report.params({"model.fine_tuned_variables": unfrozen,
                   "model.fine_tune_trainable_params": model.count_params(classifier)["trainable"]})
    report.tags({"feature_cache_fine_tune": PHASE2_CACHE})
    log.info("Fine-tuning the top %d backbone variables at lr %g (feature cache %s)",
             unfrozen, cfg.optimizer.fine_tune_lr, PHASE2_CACHE)
    steps = _optimizer_steps(cfg.backbone.fine_tune_epochs, n_train, cfg.batch_size)
    fine_cfg = OmegaConf.merge(cfg.optimizer, {"lr": cfg.optimizer.fine_tune_lr})
    model.compile_for_training(classifier, fine_cfg, steps, cfg.label_smoothing)
    more = train.fit(classifier, datasets["train"], datasets["val"], done + cfg.backbone.fine_tune_epochs,
                     lambda m, e: report.epoch(m | {"phase": 2}, e), train.schedule_callbacks(cfg), initial_epoch=done)
    return {k: history[k] + more.get(k, []) for k in history}


def train_and_evaluate(
    cfg: DictConfig, source: DatasetSource, backbone, feature_dim: int, report: Optional[Reporter] = None
) -> Outcome:
    report = report or Reporter()
    train.seed_everything(cfg.seed)
    train_ex, test_ex, class_names = load_examples(cfg, source, report)
    sizes = split_sizes(cfg.split, len(train_ex), len(test_ex))  # exact, also after skipping files
    index = data.split_indices(len(train_ex), len(test_ex), cfg.split.kind, sizes, cfg.seed)
    pool = data.concat(train_ex, test_ex)
    report.params({f"data.n_{name}": len(i) for name, i in index.items()}
                  | {"data.class_names": ",".join(class_names)})

    size, n_classes, batch = cfg.backbone.image_size, len(class_names), cfg.batch_size
    head = model.build_head(feature_dim, n_classes, cfg.head)
    classifier = model.build_classifier(backbone, head, size)
    report.params({f"model.{k}_params": v for k, v in model.count_params(classifier).items()}
                  | {"model.feature_dim": feature_dim})

    use_cache, reason = cache_decision(cfg)
    log.info("Feature cache %s", reason)
    fine_tune = cfg.backbone.trainable
    if use_cache:
        pool_features = _cached_pool_features(cfg, pool, backbone, feature_dim, report)
        trainee = head  # same weights as inside `classifier`
        datasets = {
            name: data.make_feature_dataset(pool_features[i], pool.labels[i], batch, n_classes,
                                            shuffle_seed=cfg.seed if name == "train" else None)
            for name, i in index.items()
        }
    else:
        report.tags({"feature_cache": reason})
        trainee = classifier
        datasets = _image_datasets(cfg, pool, index, n_classes, augmented(cfg, 1))
    phase = {"phase": 1} if fine_tune else {}
    steps = _optimizer_steps(cfg.epochs, len(index["train"]), batch)
    model.compile_for_training(trainee, cfg.optimizer, steps, cfg.label_smoothing)
    history = train.fit(trainee, datasets["train"], datasets["val"], cfg.epochs,
                        lambda m, e: report.epoch(m | phase, e), train.schedule_callbacks(cfg))
    if fine_tune:
        if use_cache or augmented(cfg, 2) != augmented(cfg, 1):  # else phase 1's pipelines continue
            datasets = _image_datasets(cfg, pool, index, n_classes, augmented(cfg, 2))
        trainee = classifier
        history = _fine_tune(cfg, classifier, backbone, datasets, len(index["train"]), len(history["val_accuracy"]),
                             history, report)
    report.metrics({"best_val_accuracy": max(history["val_accuracy"]), "epochs_trained": len(history["val_accuracy"])})
    probs, labels = train.predict(trainee, datasets["test"])
    metrics, cm = evaluate(probs, labels, class_names)
    report.metrics(metrics)
    log.info("test accuracy %.4f, test loss %.4f", metrics["test_accuracy"], metrics["test_loss"])
    return Outcome(classifier, class_names, pool.take(index["test"]), history, probs, labels, metrics, cm)
