"""The experiment's computation, free of any tracking: prepare, then data -> split -> (features)
-> fit -> evaluate.

:func:`prepare` needs only the config: it checks what can be checked before a run starts (config
values, the dataset, whether the split fits, the backbone) and loads the backbone.
:func:`train_and_evaluate` reports what it learns through a :class:`Reporter` as soon as it
knows it (so a crash keeps what came before): ``rps.job`` passes one that writes to MLflow, the
benchmark one that only records. It never changes the prepared backbone (fine-tuning trains a
copy of its own), so one :class:`Prepared` serves any number of runs.

Model choice is on validation only: the run's objective (what a sweeper optimizes) is
:data:`OBJECTIVE`, the exported model's validation accuracy. The test split is evaluated once,
at the end, and only reported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from omegaconf import DictConfig, OmegaConf

from rps import data, features, lite, model, train, validation
from rps.config import PHASE2_CACHE, augmented, feature_cache_plan, validate
from rps.evaluate import evaluate
from rps.report import Reporter
from rps.resources import DatasetSource, backbone_dir, check_backbone, locate_dataset
from rps.splits import split_sizes

log = logging.getLogger(__name__)

# The metric a run is judged by (returned to Hydra's sweeper, used to pick a sweep's best run).
OBJECTIVE = "best_val_accuracy"


@dataclass
class Prepared:
    """Everything a run needs before it starts: the checked config, the dataset, the backbone."""

    cfg: DictConfig
    source: DatasetSource
    backbone: model.Backbone  # frozen; runs never change it
    feature_dim: int
    # the loaded examples by dataset config, shared by the copies runs make (dataclasses.replace)
    loaded: dict = field(default_factory=dict)


@dataclass
class Outcome:
    backbone: Any  # the trained model's parts: the backbone (the prepared one, or a fine-tuned copy)
    head: Any  # and the head on its feature vector
    image_size: int
    class_names: list[str]
    test_examples: data.Examples
    history: dict[str, list[float]]
    probs: np.ndarray  # test split
    labels: np.ndarray
    metrics: dict[str, float]  # best_val_accuracy / best_val_loss (the exported model's), test_*
    confusion: np.ndarray
    trained_classifier: Any = None  # the full model, when training built it

    @property
    def classifier(self):
        """The full image -> probabilities Keras model (built on first use when training did not:
        tracing the backbone's graph costs seconds a head-only run need not spend)."""
        if self.trained_classifier is None:
            self.trained_classifier = model.build_classifier(self.backbone, self.head, self.image_size)
        return self.trained_classifier


def prepare(cfg: DictConfig) -> Prepared:
    """Check the config, the dataset, the split's fit and the backbone, then load the backbone.

    Raises an :class:`~rps.errors.RpsError` naming the fix for whatever is wrong.
    """
    validate(cfg)
    source = locate_dataset(cfg.dataset)
    if source.n_train is not None:  # unknown only for a dataset still to be downloaded
        split_sizes(cfg.split, source.n_train, source.n_test)
    check_backbone(cfg.backbone.handle)
    backbone, feature_dim = model.load_backbone(cfg.backbone.handle, cfg.backbone.image_size)
    return Prepared(cfg, source, backbone, feature_dim)


def load_examples(prepared: Prepared, report: Reporter) -> tuple[data.Examples, data.Examples, list[str]]:
    """The dataset's train and test examples and class names, loaded once per :class:`Prepared`."""
    cfg, source = prepared.cfg, prepared.source
    key = OmegaConf.to_yaml(cfg.dataset)
    if key not in prepared.loaded:
        if source.kind == "tfds":
            train_ex, test_ex, class_names, version = data.load_tfds(source)
            facts = {"tags": {"dataset_version": version}}
        else:
            train_ex, test_ex, skipped = data.load_image_folder(source, cfg.dataset.skip_corrupt)
            class_names, facts = source.class_names, {"metrics": {"skipped_corrupt_images": skipped}}
        prepared.loaded[key] = (train_ex, test_ex, class_names, facts)
    train_ex, test_ex, class_names, facts = prepared.loaded[key]
    if facts.get("tags"):
        report.tags(facts["tags"])
    if facts.get("metrics"):
        report.metrics(facts["metrics"])
    return train_ex, test_ex, class_names


SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}  # MLflow's dataset contexts


def report_datasets(cfg: DictConfig, source: DatasetSource, pool: data.Examples, index: dict, class_names: list[str],
                    report: Reporter) -> None:
    """Each split as an MLflow dataset input: where its data comes from, a digest of exactly
    which examples it holds (same data, split and seed: same digest), its size and class counts."""
    version = report.recorded["tags"].get("dataset_version", "")
    for split, context in SPLIT_CONTEXTS.items():
        examples = pool.take(index[split])
        if source.kind == "tfds":
            where = str(Path(source.data_dir) / source.name / version)
        else:
            official_test = split == "test" and cfg.split.kind == "official"
            where = str(Path(cfg.dataset.test_path if official_test else cfg.dataset.path).expanduser().resolve())
        name = f"{source.name}{'-' + version if version else ''}-{cfg.split.kind}-{split}"
        report.dataset(context, name, where, examples.digest()[:12],
                       {"examples": len(examples), "class_counts": examples.class_counts(class_names)})


def feature_forward(cfg, backbone, digest: str, cache_dir: Optional[Path]) -> tuple[Callable, str, str]:
    """The frozen backbone as a function of a batch: (forward, engine key, engine description).

    XNNPACK (a cached TFLite conversion run by LiteRT) unless ``feature_cache.engine=tf`` or the
    conversion fails, say for an unusual local backbone: then TensorFlow, saying why.
    """
    if cfg.feature_cache.engine == "tf":
        return model.tf_forward(backbone), "tf", "tf (feature_cache.engine=tf)"
    size = cfg.backbone.image_size
    try:
        key = lite.conversion_key("backbone", digest, str(size))
        content = lite.cached_conversion(key, lambda: lite.from_layer(backbone, size), cache_dir)
        return lite.LiteModel(content), "xnnpack", lite.engine_name()
    except Exception as err:  # converter and interpreter raise many types
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        log.warning("XNNPACK unavailable for backbone %s (%s); computing features with TensorFlow.",
                    cfg.backbone.handle, reason)
        return model.tf_forward(backbone), "tf", f"tf (XNNPACK unavailable: {reason})"


def _cached_pool_features(cfg, pool: data.Examples, backbone, feature_dim: int, report: Reporter) -> np.ndarray:
    size = cfg.backbone.image_size
    cache_dir = Path(cfg.feature_cache.dir).expanduser() if cfg.feature_cache.dir else None
    digest = features.backbone_digest(cfg.backbone.handle, backbone_dir(cfg.backbone.handle))
    forward, engine, engine_name = feature_forward(cfg, backbone, digest, cache_dir)
    key = features.cache_key(pool.digest(), digest, size, engine)

    def compute() -> np.ndarray:
        images = data.make_dataset(pool, size, cfg.feature_cache.batch_size, 1).map(lambda x, y: x)
        return model.extract_features(forward, images, len(pool))

    meta = {"handle": cfg.backbone.handle, "image_size": size, "examples": len(pool), "engine": engine_name}
    result = features.cached_features(key, pool.labels, feature_dim, compute, cache_dir, meta)
    log.info("Feature cache %s: %s (features by %s)", result.status, result.path, engine_name)
    report.tags({"feature_cache": result.status, "feature_cache_key": key, "feature_engine": engine_name})
    report.metrics({"timing/feature_extraction_seconds": result.seconds})  # a diagnostic: kept apart
    return result.features


def _image_datasets(cfg, pool: data.Examples, index: dict, n_classes: int, augment_train: bool) -> dict[str, Any]:
    augment = data.augmenter(cfg.augment, cfg.seed) if augment_train else None
    return {
        name: data.make_dataset(pool.take(i), cfg.backbone.image_size, cfg.batch_size, n_classes,
                                shuffle_seed=cfg.seed if name == "train" else None,
                                augment=augment if name == "train" else None)
        for name, i in index.items()
    }


def _fine_tune(cfg, classifier, backbone, datasets, n_train: int, done: int, history: dict, report: Reporter) -> dict:
    """Phase 2: unfreeze the backbone's top and train the whole model at ``optimizer.fine_tune_lr``."""
    unfrozen = backbone.unfreeze_top(cfg.backbone.fine_tune_from)
    report.params({"model.fine_tuned_variables": unfrozen,
                   "model.fine_tune_trainable_params": model.count_params(classifier)["trainable"]})
    report.tags({"feature_cache_fine_tune": PHASE2_CACHE})
    log.info("Fine-tuning the top %d backbone variables at lr %g (feature cache %s)",
             unfrozen, cfg.optimizer.fine_tune_lr, PHASE2_CACHE)
    steps = train.optimizer_steps(cfg.backbone.fine_tune_epochs, n_train, cfg.batch_size)
    fine_cfg = OmegaConf.merge(cfg.optimizer, {"lr": cfg.optimizer.fine_tune_lr})
    model.compile_for_training(classifier, fine_cfg, steps, cfg.label_smoothing)
    more = train.fit(classifier, datasets["train"], datasets["val"], done + cfg.backbone.fine_tune_epochs,
                     lambda m, e: report.epoch(m | {"phase": 2}, e), train.schedule_callbacks(cfg), initial_epoch=done,
                     stop=lambda: report.stop_reason)
    return {k: history[k] + more.get(k, []) for k in history}


def train_and_evaluate(prepared: Prepared, report: Optional[Reporter] = None) -> Outcome:
    cfg, report = prepared.cfg, report or Reporter()
    train.release_memory()
    train.seed_everything(cfg.seed)
    train_ex, test_ex, class_names = load_examples(prepared, report)
    pool = data.concat(train_ex, test_ex)
    use_cache, reason = feature_cache_plan(cfg)
    log.info("Feature cache %s", reason)
    pool_features = None  # the frozen backbone's features: to train on, or to find groups of similar images
    if use_cache or cfg.split.group_by == "clusters":
        pool_features = _cached_pool_features(cfg, pool, prepared.backbone, prepared.feature_dim, report)
    index, folds = validation.make_split(cfg, train_ex, test_ex, pool_features, report)
    report.params({f"data.n_{name}": len(i) for name, i in index.items()}
                  | {"data.class_names": ",".join(class_names)})
    report_datasets(cfg, prepared.source, pool, index, class_names, report)

    size, n_classes, batch = cfg.backbone.image_size, len(class_names), cfg.batch_size
    head = model.build_head(prepared.feature_dim, n_classes, cfg.head)
    backbone, classifier = prepared.backbone, None
    report.params({f"model.{k}_params": v for k, v in model.count_params(backbone, head).items()}
                  | {"model.feature_dim": prepared.feature_dim})

    if use_cache:
        trainee = head  # the head alone, on features
        datasets = {
            name: data.make_feature_dataset(pool_features[i], pool.labels[i], batch, n_classes,
                                            shuffle_seed=cfg.seed if name == "train" else None)
            for name, i in index.items()
        }
    else:
        report.tags({"feature_cache": reason})
        trainee = classifier = model.build_classifier(backbone, head, size)
        datasets = _image_datasets(cfg, pool, index, n_classes, augmented(cfg, 1))
    phase = {"phase": 1} if cfg.backbone.trainable else {}
    steps = train.optimizer_steps(cfg.epochs, len(index["train"]), batch)
    model.compile_for_training(trainee, cfg.optimizer, steps, cfg.label_smoothing)
    history = train.fit(trainee, datasets["train"], datasets["val"], cfg.epochs,
                        lambda m, e: report.epoch(m | phase, e), train.schedule_callbacks(cfg),
                        stop=lambda: report.stop_reason)
    if report.stop_reason:
        log.warning("Training stopped after epoch %d: %s", len(history["val_accuracy"]), report.stop_reason)
    if cfg.backbone.trainable and not report.stop_reason:
        # a backbone of its own: the prepared one stays frozen and unchanged for other runs
        backbone, _ = model.load_backbone(cfg.backbone.handle, size)
        classifier = trainee = model.build_classifier(backbone, head, size)
        if use_cache or augmented(cfg, 2) != augmented(cfg, 1):  # else phase 1's pipelines continue
            datasets = _image_datasets(cfg, pool, index, n_classes, augmented(cfg, 2))
        history = _fine_tune(cfg, classifier, backbone, datasets, len(index["train"]), len(history["val_accuracy"]),
                             history, report)
    val_metrics, _ = evaluate(*train.predict(trainee, datasets["val"]), class_names, split="val")
    chosen = {OBJECTIVE: val_metrics["val_accuracy"], "best_val_loss": val_metrics["val_loss"],
              "epochs_trained": len(history["val_accuracy"])}
    if folds is not None:  # judged by the mean over K folds, not one carve-out
        chosen |= validation.cross_validate(cfg, pool_features, pool.labels, folds, n_classes, val_metrics, report)
    report.metrics(chosen)
    probs, labels = train.predict(trainee, datasets["test"])
    metrics, cm = evaluate(probs, labels, class_names)
    report.metrics(metrics)
    log.info("validation accuracy %.4f (chosen on), test accuracy %.4f (reported only)",
             chosen[OBJECTIVE], metrics["test_accuracy"])
    return Outcome(backbone, head, size, class_names, pool.take(index["test"]), history, probs, labels,
                   chosen | metrics, cm, classifier)
