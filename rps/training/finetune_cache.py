"""Phase 2 (fine-tuning) on activations cached below the cut: the frozen bottom is computed once.

Fine-tuning trains only the top of the backbone; :mod:`rps.model.split` cuts the network there.
The frozen lower part's output for an image never changes, so it is computed once per image
(XNNPACK, like the features) and stored like the feature cache (:mod:`rps.model.features`: same
locking, atomic writes and checksums; float16), and phase 2 trains the upper part and the head
on it. Afterwards the trained weights are written back into the hub module, so the exported
model (image -> probabilities) is unchanged in kind.

Augmentation happens before the network, so it cannot move below the cut exactly: instead each
training image gets one augmented *view* per fine-tuning epoch (``backbone.fine_tune_views``
caps their number; epochs then cycle through them), drawn by the same Keras layers as on images
and cached per seed. With one view per epoch every epoch sees a fresh random augmentation of
every image, as on images, only from other random draws. Sizes on the real dataset (224 px,
MobileNet-V2 cut below block 12): 37.6 KB per image and view, 109 MB for the whole pool.
Epoch ``e`` visits the training examples in a stateless permutation of (seed, ``e``), as on
images (rps.data.pipelines.EpochStream), so checkpoints and resume work the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from rps.common.errors import ResourceError
from rps.data.examples import Examples
from rps.data.images import PREPROCESSING
from rps.data.pipelines import AUTOTUNE, EpochStream, augmenter, make_dataset
from rps.model.backbone import count_params, extract_features
from rps.model.features import augmented, backbone_digest, cached_features
from rps.model.hub import backbone_dir
from rps.model.split import SplitBackbone, SplitUnavailable, split_backbone
from rps.training.report import Reporter

log = logging.getLogger(__name__)
keras = tf.keras

FORMAT = 1
STORAGE = np.float16  # cached activations: half the memory and disk of float32 (docs/finetune-speed.md)
VIEW_SEED_STRIDE = 1000  # view v of seed s is augmented with seed s * stride + 10 * (v + 1) (+0..6 per layer)


def plan(cfg: DictConfig, backbone) -> tuple[Optional[SplitBackbone], str]:
    """The split backbone when phase 2 can train on cached activations, and the reason logged
    (the run's tag ``feature_cache_fine_tune``)."""
    if not cfg.backbone.fine_tune_cache:
        return None, "off: backbone.fine_tune_cache=false, fine-tuning on images"
    try:
        split = split_backbone(backbone, cfg.backbone.image_size, cfg.backbone.fine_tune_from)
    except SplitUnavailable as err:
        log.warning("Fine-tuning on images: the backbone cannot be split at the cut (%s).", err)
        return None, f"off: the backbone cannot be split at the cut ({err}), fine-tuning on images"
    shape = "x".join(map(str, split.activation_shape))
    return split, (f"on: activations below the cut ({split.cache_layer}, {shape}, {np.dtype(STORAGE).name}) "
                   f"cached; the top {split.trained_variables} variables (from {split.first_trained_layer}) "
                   f"train on them")


def view_count(cfg: DictConfig) -> int:
    """Augmented views per training image: one per fine-tuning epoch unless capped (0: not augmented)."""
    if not augmented(cfg, 2):
        return 0
    return min(cfg.backbone.fine_tune_views or cfg.backbone.fine_tune_epochs, cfg.backbone.fine_tune_epochs)


def view_seed(seed: int, view: int) -> int:
    return seed * VIEW_SEED_STRIDE + 10 * (view + 1)


def augmentation_id(cfg: DictConfig, view: Optional[int]) -> str:
    """What determines a view's random augmentation (part of its cache key); ``none`` unaugmented."""
    if view is None:
        return "none"
    settings = {k: v for k, v in OmegaConf.to_container(cfg.augment).items() if k != "head_phase"}
    return json.dumps({"augment": settings, "seed": view_seed(cfg.seed, view),
                       "batch": cfg.feature_cache.batch_size}, sort_keys=True)


def activation_key(examples: str, backbone: str, image_size: int, engine: str, cache_layer: str,
                   augmentation: str) -> str:
    """SHA-256 of what determines an entry: the examples, the backbone's files, the image size,
    the preprocessing, the engine, the cut, the storage type and the augmentation (with its seed)."""
    parts = (f"rps-activations/{FORMAT}/{PREPROCESSING}/{image_size}/{engine}/{backbone}/{cache_layer}/"
             f"{np.dtype(STORAGE).name}/{augmentation}/{examples}")
    return hashlib.sha256(parts.encode()).hexdigest()[:40]


def _to_storage(activations) -> np.ndarray:
    stored = np.asarray(activations).astype(STORAGE)
    if not np.isfinite(stored).all():
        raise ResourceError(
            "The backbone's activations below the fine-tuning cut overflow float16, so they cannot be "
            "cached. Set backbone.fine_tune_cache=false to fine-tune on images.")
    return stored


class ActivationCache:
    """The lower part's activations of examples (optionally augmented), from the cache or computed."""

    def __init__(self, cfg: DictConfig, split: SplitBackbone, frozen_forward: Callable):
        self.cfg, self.split = cfg, split
        self.cache_dir = Path(cfg.feature_cache.dir).expanduser() if cfg.feature_cache.dir else None
        self.digest = backbone_digest(cfg.backbone.handle, backbone_dir(cfg.backbone.handle))
        self.forward, self.engine, self.engine_name = frozen_forward(
            cfg, split.lower, self.digest, self.cache_dir, f"backbone-below-{split.cache_layer}")
        self.results: list[tuple[str, float, str]] = []  # (status, seconds, key) of each entry

    def get(self, examples: Examples, view: Optional[int] = None) -> np.ndarray:
        cfg, size = self.cfg, self.cfg.backbone.image_size
        augmentation = augmentation_id(cfg, view)
        key = activation_key(examples.digest(), self.digest, size, self.engine, self.split.cache_layer, augmentation)

        def compute() -> np.ndarray:
            augment = None if view is None else augmenter(cfg.augment, view_seed(cfg.seed, view))
            images = make_dataset(examples, size, cfg.feature_cache.batch_size, 1, augment=augment)
            return extract_features(lambda batch: _to_storage(self.forward(batch)), images.map(lambda x, y: x),
                                    len(examples))

        meta = {"handle": cfg.backbone.handle, "image_size": size, "examples": len(examples),
                "engine": self.engine_name, "cache_layer": self.split.cache_layer, "augmentation": augmentation}
        result = cached_features(key, examples.labels, self.split.activation_shape, compute, self.cache_dir, meta,
                                 dtype=STORAGE)
        log.info("Activation cache %s: %s (%s, by %s)", result.status, result.path,
                 "unaugmented" if view is None else f"augmented view {view}", self.engine_name)
        self.results.append((result.status, result.seconds, result.path.stem))
        return result.features

    def report(self, report: Reporter) -> None:
        statuses, seconds, keys = zip(*self.results)
        report.tags({"activation_cache": ", ".join(sorted(set(statuses))), "activation_cache_key": keys[0],
                     "activation_engine": self.engine_name})
        report.metrics({"timing_activation_cache_seconds": sum(seconds)})


def _batches(activations: tf.Tensor, rows, onehot: tf.Tensor, batch: int) -> tf.data.Dataset:
    """Batches of (float32 activations[rows], one-hot labels), gathered by tf.data from tensors
    (not a Python generator: ``Dataset.from_generator`` ties its generator to TensorFlow's global
    graph once ``fit`` ran it, keeping the arrays alive for the life of the process)."""
    ds = tf.data.Dataset.from_tensor_slices(rows).batch(batch)
    return ds.map(lambda r: (tf.cast(tf.gather(activations, r), tf.float32), tf.gather(onehot, r)))


def train_stream(activations: tf.Tensor, rows: np.ndarray, onehot: np.ndarray, seed: int, batch: int) -> EpochStream:
    """Training batches epoch by epoch: epoch ``e`` visits the ``n`` training examples in a
    stateless permutation of (seed, e), reading example ``i``'s activations at row
    ``rows[e % V, i]`` of ``activations`` (``rows``: [V views, n])."""
    views, n = rows.shape
    table, labels = tf.constant(rows, tf.int64), tf.constant(onehot)

    def batches(epoch: tf.Tensor) -> tf.data.Dataset:
        epoch = tf.cast(epoch, tf.int64)
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64),
                                                         seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        where = tf.gather(table[epoch % views], order)
        ds = tf.data.Dataset.from_tensor_slices((where, order)).batch(batch)
        return ds.map(lambda r, i: (tf.cast(tf.gather(activations, r), tf.float32), tf.gather(labels, i)))

    return EpochStream(batches, -(-n // batch))


def build_trainee(split: SplitBackbone, head: keras.Model) -> keras.Model:
    """Activations below the cut -> class probabilities: the upper part (BatchNorm in inference
    mode, as the hub module runs it), then the head."""
    inputs = keras.Input(split.activation_shape, name="activations")
    return keras.Model(inputs, head(split.upper(inputs)), name="rps_classifier_above_cut")


def datasets_on_activations(cfg: DictConfig, split: SplitBackbone, pool: Examples, index: dict, n_classes: int,
                            report: Reporter, frozen_forward: Callable) -> dict:
    """Phase 2's datasets: training views (augmented when configured) and the pool's activations
    for validation and test, every entry from the activation cache."""
    cache = ActivationCache(cfg, split, frozen_forward)
    pool_activations = tf.convert_to_tensor(cache.get(pool))
    train_index = np.asarray(index["train"], np.int64)
    n, views = len(train_index), view_count(cfg)
    if views:  # view v of training example i is row v * n + i of the views stacked
        training = tf.convert_to_tensor(np.concatenate([cache.get(pool.take(train_index), v) for v in range(views)]))
        rows = np.arange(views * n, dtype=np.int64).reshape(views, n)
    else:
        training, rows = pool_activations, train_index[None, :]
    cache.report(report)
    onehot = np.eye(n_classes, dtype=np.float32)[pool.labels]
    datasets = {"train": train_stream(training, rows, onehot[train_index], cfg.seed, cfg.batch_size)}
    all_onehot = tf.constant(onehot)
    for name, rows in index.items():
        if name != "train" and len(rows):  # no validation in a refit
            datasets[name] = _batches(pool_activations, np.asarray(rows, np.int64), all_onehot,
                                      cfg.batch_size).prefetch(AUTOTUNE)
    log.info("Fine-tuning on cached activations of %s (%s)", split.cache_layer,
             f"{views} augmented view(s) per image" if views else "unaugmented")
    return datasets


def fine_tune_params(split: SplitBackbone, trainee) -> dict:
    return {"model.fine_tuned_variables": split.trained_variables,
            "model.fine_tune_trainable_params": count_params(trainee)["trainable"]}
