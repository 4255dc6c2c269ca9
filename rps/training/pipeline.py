"""The experiment's computation, free of any tracking: prepare, then a short sequence of steps —
load, features (when needed), split, train (phase 1, then phase 2 when fine-tuning), select
(the objective, on validation only), test.

:func:`prepare` needs only a validated config: it checks what can be checked before a run
starts (the dataset, whether the split fits, the backbone) and loads the backbone.
:func:`train_and_evaluate` reports what it learns through a :class:`Reporter` as soon as it knows
it (so a crash keeps what came before): ``rps.runner.job`` passes one that writes to MLflow, the
benchmarks one that only records. It never changes the prepared backbone (fine-tuning trains a
copy of its own), so one :class:`Prepared` serves any number of runs.

Model choice is on validation only: the run's objective (rps.training.outcome.OBJECTIVE) is the
exported model's validation accuracy (or the fold mean). The test split is evaluated once, at
the end, and only reported.
"""

from __future__ import annotations

import gc
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from omegaconf import DictConfig, OmegaConf

from rps.data.examples import Examples, concat, load_image_folder, load_tfds
from rps.data.pipelines import make_dataset
from rps.data.sources import DatasetSource
from rps.model import lite
from rps.model.backbone import Backbone, count_params, extract_features, load_backbone, tf_forward
from rps.model.features import augmented, backbone_digest, cache_key, cache_plan, cached_features
from rps.model.head import build_classifier, build_head
from rps.model.hub import backbone_dir
from rps.training.evaluate import evaluate
from rps.training import finetune_cache
from rps.training.checkpoints import Checkpoints
from rps.training.loop import PhaseCheckpoints, epochs_done, predict, release_memory, seed_everything, train_phase
from rps.training.preflight import preflight
from rps.training.outcome import OBJECTIVE, OBJECTIVE_LOSS, OBJECTIVE_TAG, Outcome, RunningObjective, StopSignal
from rps.training.report import Reporter
from rps.training.validation import clusters_backbone_features, cross_validate, make_split, train_on_features

log = logging.getLogger(__name__)
EpochHook = Callable[[dict[str, float], int], None]


@dataclass
class Prepared:
    """Everything a run needs before it starts: the config, the dataset, the backbone."""

    cfg: DictConfig
    source: DatasetSource
    backbone: Backbone  # frozen; runs never change it
    feature_dim: int
    # the loaded examples by dataset config, shared by the copies runs make (dataclasses.replace)
    loaded: dict = field(default_factory=dict)


def prepare(cfg: DictConfig, source: Optional[DatasetSource] = None) -> Prepared:
    """:func:`preflight` (unless its ``source`` is given), then load the backbone."""
    source = source or preflight(cfg)
    backbone, feature_dim = load_backbone(cfg.backbone.handle, cfg.backbone.image_size)
    return Prepared(cfg, source, backbone, feature_dim)


# --------------------------------------------------------------------------- load


def load_examples(prepared: Prepared, report: Reporter) -> tuple[Examples, Examples, list[str]]:
    """The dataset's train and test examples and class names, loaded once per :class:`Prepared`."""
    cfg, source = prepared.cfg, prepared.source
    key = OmegaConf.to_yaml(cfg.dataset)
    if key not in prepared.loaded:
        if source.kind == "tfds":
            train_ex, test_ex, class_names, version = load_tfds(source)
            facts = {"tags": {"dataset_version": version}}
        else:
            train_ex, test_ex, skipped = load_image_folder(source, cfg.dataset.skip_corrupt, cfg.dataset.max_pixels)
            class_names, facts = source.class_names, {"metrics": {"skipped_corrupt_images": skipped}}
        prepared.loaded[key] = (train_ex, test_ex, class_names, facts)
    train_ex, test_ex, class_names, facts = prepared.loaded[key]
    if facts.get("tags"):
        report.tags(facts["tags"])
    if facts.get("metrics"):
        report.metrics(facts["metrics"])
    return train_ex, test_ex, class_names


# --------------------------------------------------------------------------- features


def feature_forward(cfg, backbone, digest: str, cache_dir: Optional[Path], part: str = "backbone"
                    ) -> tuple[Callable, str, str]:
    """The frozen backbone (or a frozen ``part`` of it) as a function of a batch: (forward, engine
    key, engine description).

    XNNPACK (a cached TFLite conversion run by LiteRT) unless ``feature_cache.engine=tf`` or the
    conversion fails, say for an unusual local backbone: then TensorFlow, saying why.
    """
    if cfg.feature_cache.engine == "tf":
        return tf_forward(backbone), "tf", "tf (feature_cache.engine=tf)"
    size = cfg.backbone.image_size
    try:
        key = lite.conversion_key(part, digest, str(size))
        content = lite.cached_conversion(key, lambda: lite.from_layer(backbone, size), cache_dir)
        return lite.LiteModel(content), "xnnpack", lite.engine_name()
    except Exception as err:  # converter and interpreter raise many types
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        log.warning("XNNPACK unavailable for backbone %s (%s); computing features with TensorFlow.",
                    cfg.backbone.handle, reason)
        return tf_forward(backbone), "tf", f"tf (XNNPACK unavailable: {reason})"


def pool_features(prepared: Prepared, pool: Examples, report: Reporter) -> np.ndarray:
    """The frozen backbone's features of every example of the pool, from the feature cache."""
    cfg, size = prepared.cfg, prepared.cfg.backbone.image_size
    cache_dir = Path(cfg.feature_cache.dir).expanduser() if cfg.feature_cache.dir else None
    digest = backbone_digest(cfg.backbone.handle, backbone_dir(cfg.backbone.handle))
    forward, engine, engine_name = feature_forward(cfg, prepared.backbone, digest, cache_dir)
    key = cache_key(pool.digest(), digest, size, engine)

    def compute() -> np.ndarray:
        images = make_dataset(pool, size, cfg.feature_cache.batch_size, 1).map(lambda x, y: x)
        return extract_features(forward, images, len(pool))

    meta = {"handle": cfg.backbone.handle, "image_size": size, "examples": len(pool), "engine": engine_name}
    result = cached_features(key, pool.labels, prepared.feature_dim, compute, cache_dir, meta)
    log.info("Feature cache %s: %s (features by %s)", result.status, result.path, engine_name)
    report.tags({"feature_cache": result.status, "feature_cache_key": key, "feature_engine": engine_name})
    timing = "timing_feature_load_seconds" if result.status == "hit" else "timing_feature_extraction_seconds"
    report.metrics({timing: result.seconds})  # a diagnostic: kept apart
    return result.features


# --------------------------------------------------------------------------- split


SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}  # MLflow's dataset contexts


def split_digest_tags(digests: dict[str, str]) -> dict[str, str]:
    """``rps.data.<split>_digest`` (which examples, exactly) and ``rps.data.split_digest`` of all
    three: runs with equal split digests were chosen and tested on the same data, so their
    objectives compare (rps.tracking.champion reads it; rps.reproduce checks it)."""
    tags = {f"rps.data.{split}_digest": digest for split, digest in digests.items()}
    whole = "\0".join(f"{split}={digests[split]}" for split in sorted(digests))
    return tags | {"rps.data.split_digest": hashlib.sha256(whole.encode()).hexdigest()}


def report_datasets(cfg: DictConfig, source: DatasetSource, pool: Examples, index: dict, class_names: list[str],
                    report: Reporter) -> None:
    """Each split as an MLflow dataset input: where its data comes from, a digest of exactly
    which examples it holds (same data, split and seed: same digest), its size and class counts."""
    version = report.recorded["tags"].get("dataset_version", "")
    digests = {split: pool.take(index[split]).digest() for split in SPLIT_CONTEXTS}
    report.tags(split_digest_tags(digests))
    for split, context in SPLIT_CONTEXTS.items():
        if not len(index[split]):
            continue  # a refit has no validation split
        examples = pool.take(index[split])
        if source.kind == "tfds":
            where = str(Path(source.data_dir) / source.name / version)
        else:
            official_test = split == "test" and cfg.split.kind == "official"
            where = str(Path(cfg.dataset.test_path if official_test else cfg.dataset.path).expanduser().resolve())
        name = f"{source.name}{'-' + version if version else ''}-{cfg.split.kind}-{split}"
        report.dataset(context, name, where, digests[split][:12],
                       {"examples": len(examples), "class_counts": examples.class_counts(class_names)})


def split(prepared: Prepared, train_ex: Examples, test_ex: Examples, class_names: list[str],
          features: Optional[np.ndarray], report: Reporter) -> tuple[dict, Optional[list], Optional[np.ndarray]]:
    """Which pool examples each split holds (and the K folds, and the training examples' groups),
    reported as params and datasets."""
    cfg = prepared.cfg
    index, folds, groups = make_split(cfg, train_ex, test_ex, features, report)
    report.params({f"data.n_{name}": len(i) for name, i in index.items()} | {"data.class_names": ",".join(class_names)})
    report_datasets(cfg, prepared.source, concat(train_ex, test_ex), index, class_names, report)
    return index, folds, groups


# --------------------------------------------------------------------------- train


@dataclass
class Trained:
    """The model after training: its parts, the model that was trained last (the head alone on
    features, or the whole classifier on images) with the datasets it was trained on."""

    backbone: Backbone
    head: Any
    trainee: Any
    datasets: dict
    history: dict[str, list[float]]
    classifier: Any = None  # the whole image model, when it was built for training


def _image_datasets(cfg, pool: Examples, index: dict, n_classes: int, augment_train: bool) -> dict[str, Any]:
    from rps.data.pipelines import augmenter

    augment = augmenter(cfg.augment, cfg.seed) if augment_train else None
    return {
        name: make_dataset(pool.take(i), cfg.backbone.image_size, cfg.batch_size, n_classes,
                           shuffle_seed=cfg.seed if name == "train" else None,
                           augment=augment if name == "train" else None)
        for name, i in index.items() if len(i)  # no validation dataset in a refit (split.val_size=0)
    }


def _plan(checkpoints: Optional[Checkpoints], phase: int, before: dict) -> Optional[PhaseCheckpoints]:
    """Checkpointing of ``phase``, resuming it when the run's latest checkpoint is of that phase."""
    if checkpoints is None:
        return None
    saved = checkpoints.latest()
    return PhaseCheckpoints(checkpoints, phase, before, saved if saved is not None and saved.phase == phase else None)


def train_head(prepared: Prepared, pool: Examples, index: dict, features: Optional[np.ndarray], n_classes: int,
               sink: EpochHook, stop: StopSignal, report: Reporter, checkpoints: Optional[Checkpoints] = None) -> Trained:
    """Phase 1 (a frozen run's only phase): the head on the frozen backbone, on cached features
    when the feature cache applies, else on images (augmented when configured). A run resumed in
    phase 2 skips it (the phase-2 checkpoint holds the head)."""
    cfg = prepared.cfg
    use_cache, reason = cache_plan(cfg)
    phase = (lambda m, e: sink(m | {"phase": 1}, e)) if cfg.backbone.trainable else sink
    head = build_head(prepared.feature_dim, n_classes, cfg.head)
    report.params({f"model.{k}_params": v for k, v in count_params(prepared.backbone, head).items()}
                  | {"model.feature_dim": prepared.feature_dim})
    saved = checkpoints.latest() if checkpoints is not None else None
    if saved is not None and saved.phase == 2:  # phase 1 finished before the run was stopped
        trained = Trained(prepared.backbone, head, head, {}, saved.phase1_history())
        if not use_cache:
            trained.datasets = _image_datasets(cfg, pool, index, n_classes, augmented(cfg, 1))
        return trained
    plan = _plan(checkpoints, 1, {})
    if use_cache:
        datasets, history = train_on_features(cfg, head, features, pool.labels, index, phase, stop, checkpoints=plan)
        trained = Trained(prepared.backbone, head, head, datasets, history)
    else:
        report.tags({"feature_cache": reason})
        classifier = build_classifier(prepared.backbone, head, cfg.backbone.image_size)
        datasets = _image_datasets(cfg, pool, index, n_classes, augmented(cfg, 1))
        history = train_phase(classifier, cfg.optimizer, cfg, datasets, len(index["train"]), cfg.epochs, phase,
                              stop=stop, checkpoints=plan)
        trained = Trained(prepared.backbone, head, classifier, datasets, history, classifier)
    if stop():
        log.warning("Training stopped after epoch %d: %s", epochs_done(history), stop().reason)
    return trained


def fine_tune(prepared: Prepared, trained: Trained, pool: Examples, index: dict, n_classes: int, sink: EpochHook,
              stop: StopSignal, report: Reporter, checkpoints: Optional[Checkpoints] = None) -> Trained:
    """Phase 2: a copy of the backbone with its top unfrozen, trained with the head at
    ``optimizer.fine_tune_lr`` (the prepared backbone stays frozen and unchanged for other runs):
    on activations cached below the cut when the backbone splits there (rps.training.finetune_cache;
    the trained top is then written back into the copy), else on images."""
    cfg, size = prepared.cfg, prepared.cfg.backbone.image_size
    backbone, _ = load_backbone(cfg.backbone.handle, size)
    split, why = finetune_cache.plan(cfg, backbone)
    report.tags({"feature_cache_fine_tune": why})
    if split is not None:
        trainee = finetune_cache.build_trainee(split, trained.head)
        classifier = None  # built from the written-back backbone when the model is exported
        datasets = finetune_cache.datasets_on_activations(cfg, split, pool, index, n_classes, report, feature_forward)
        report.params(finetune_cache.fine_tune_params(split, trainee))
    else:
        classifier = trainee = build_classifier(backbone, trained.head, size)
        datasets = trained.datasets
        if cache_plan(cfg)[0] or augmented(cfg, 2) != augmented(cfg, 1) or not datasets:  # else phase 1's continue
            datasets = _image_datasets(cfg, pool, index, n_classes, augmented(cfg, 2))
        unfrozen = backbone.unfreeze_top(cfg.backbone.fine_tune_from)
        report.params({"model.fine_tuned_variables": unfrozen,
                       "model.fine_tune_trainable_params": count_params(classifier)["trainable"]})
    log.info("Fine-tuning the top of the backbone at lr %g (%s)", cfg.optimizer.fine_tune_lr, why)
    done = epochs_done(trained.history)
    fine_cfg = OmegaConf.merge(cfg.optimizer, {"lr": cfg.optimizer.fine_tune_lr})
    more = train_phase(trainee, fine_cfg, cfg, datasets, len(index["train"]), done + cfg.backbone.fine_tune_epochs,
                       lambda m, e: sink(m | {"phase": 2}, e), start_epoch=done, stop=stop,
                       checkpoints=_plan(checkpoints, 2, trained.history))
    if split is not None:
        split.write_back()  # the copy's hub module now computes the trained network
    history = {k: trained.history[k] + more.get(k, []) for k in trained.history}
    return Trained(backbone, trained.head, trainee, datasets, history, classifier)


# --------------------------------------------------------------------------- select and test


def _measures(cfg: DictConfig, folds: Optional[list]) -> str:
    """What the objective measured in this run, in words (the tag OBJECTIVE_TAG)."""
    if folds is not None:
        how = "head and fine-tuning" if cfg.backbone.trainable else "head"
        return f"mean validation accuracy over {len(folds)} folds (a model per fold: the run's {how} training)"
    if cfg.early_stopping.enabled and cfg.early_stopping.restore_best_weights:
        return "validation accuracy of the exported model: the best epoch's weights (early stopping restored them)"
    return "validation accuracy of the exported model: the last epoch's weights"


def fold_predictions(prepared: Prepared, pool: Examples, index: dict, features: Optional[np.ndarray], n_classes: int,
                     stop: StopSignal) -> tuple[np.ndarray, np.ndarray]:
    """One fold's model, trained as the run's model is (phase 1, and phase 2 when it fine-tunes:
    on the same feature cache and unaugmented activation cache, which are keyed by the pool; augmented
    views are keyed by the training examples, so each fold computes its own), and its validation
    predictions."""
    quiet, nothing = Reporter(), (lambda metrics, epoch: None)
    trained = train_head(prepared, pool, index, features, n_classes, nothing, stop, quiet)
    if prepared.cfg.backbone.trainable and not stop():
        trained = fine_tune(prepared, trained, pool, index, n_classes, nothing, stop, quiet)
    predictions = predict(trained.trainee, trained.datasets["val"])
    del trained
    gc.collect()  # the fold's backbone copy and activations go before the next fold's
    return predictions


def select(prepared: Prepared, trained: Trained, pool: Examples, folds: Optional[list], features: Optional[np.ndarray],
           class_names: list[str], report: Reporter, stop: Optional[StopSignal] = None) -> tuple[dict[str, float], tuple]:
    """The objective: the exported model's validation accuracy and loss (or the mean over K folds),
    and that model's validation predictions (probabilities, labels). A refit (no validation split)
    has no objective: its config was chosen on the validation of the run it refits."""
    cfg, stop = prepared.cfg, stop or StopSignal()
    if cfg.split.refit:
        report.tags({OBJECTIVE_TAG: "none: a refit on every training example (no validation split)"})
        report.metrics({"epochs_trained": epochs_done(trained.history)})
        return {}, (None, None)
    val_predictions = predict(trained.trainee, trained.datasets["val"])
    val_metrics, _ = evaluate(*val_predictions, class_names, split="val")
    chosen = {OBJECTIVE: val_metrics["val_accuracy"], OBJECTIVE_LOSS: val_metrics["val_loss"]}
    if folds is not None:  # judged by the mean over K folds, not one carve-out
        def fit_fold(index: dict) -> tuple:
            return fold_predictions(prepared, pool, index, features, len(class_names), stop)

        chosen = cross_validate(cfg.seed, folds, len(class_names), val_metrics, fit_fold, report)
    report.tags({OBJECTIVE_TAG: _measures(cfg, folds)})
    report.metrics(chosen | {"epochs_trained": epochs_done(trained.history)})
    return chosen, val_predictions


def test(trained: Trained, class_names: list[str], report: Reporter) -> tuple[dict[str, float], np.ndarray, tuple]:
    """The test split, evaluated once and only reported: its metrics, confusion matrix, predictions."""
    probs, labels = predict(trained.trainee, trained.datasets["test"])
    metrics, confusion = evaluate(probs, labels, class_names)
    report.metrics(metrics)
    return metrics, confusion, (probs, labels)


# --------------------------------------------------------------------------- the whole run


def train_and_evaluate(prepared: Prepared, report: Optional[Reporter] = None, stop: Optional[StopSignal] = None,
                       on_epoch: Optional[EpochHook] = None, checkpoints: Optional[Checkpoints] = None) -> Outcome:
    """One run: load, features, split, train, select, test. ``stop`` ends training after the epoch
    in progress once anybody requests it; ``on_epoch`` sees each epoch's metrics after the report;
    ``checkpoints`` keeps a checkpoint of every epoch, and a run that has one resumes from it."""
    cfg, report, stop = prepared.cfg, report or Reporter(), stop or StopSignal()
    running = RunningObjective(cfg.early_stopping.enabled and cfg.early_stopping.restore_best_weights)

    def sink(metrics: dict[str, float], epoch: int) -> None:
        metrics = running(metrics)  # the objective as it stands, first
        report.epoch(metrics, epoch)
        if on_epoch is not None:
            on_epoch(metrics, epoch)

    release_memory()
    seed_everything(cfg.seed)
    train_ex, test_ex, class_names = load_examples(prepared, report)
    pool = concat(train_ex, test_ex)
    log.info("Feature cache %s", cache_plan(cfg)[1])
    features = None  # the frozen backbone's features: to train on, or to find groups of similar images
    if cache_plan(cfg)[0] or clusters_backbone_features(cfg.split):
        features = pool_features(prepared, pool, report)
    index, folds, groups = split(prepared, train_ex, test_ex, class_names, features, report)
    trained = train_head(prepared, pool, index, features, len(class_names), sink, stop, report, checkpoints)
    if cfg.backbone.trainable and not stop():
        trained = fine_tune(prepared, trained, pool, index, len(class_names), sink, stop, report, checkpoints)
    chosen, (val_probs, val_labels) = select(prepared, trained, pool, folds, features, class_names, report, stop)
    metrics, confusion, (probs, labels) = test(trained, class_names, report)
    if OBJECTIVE in chosen:
        log.info("validation accuracy %.4f (chosen on), test accuracy %.4f (reported only)",
                 chosen[OBJECTIVE], metrics["test_accuracy"])
    else:
        log.info("refit on every training example: test accuracy %.4f (reported only)", metrics["test_accuracy"])
    return Outcome(trained.backbone, trained.head, cfg.backbone.image_size, class_names, pool.take(index["test"]),
                   trained.history, probs, labels, chosen | {"epochs_trained": epochs_done(trained.history)}
                   | metrics, confusion, stop(), trained.classifier,
                   val_examples=pool.take(index["val"]), train_examples=pool.take(index["train"]),
                   val_probs=val_probs, val_labels=val_labels,
                   val_groups=None if groups is None else groups[index["val"]])
