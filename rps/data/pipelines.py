"""tf.data pipelines: batches of (image in [0, 1], one-hot label) or of (cached features, one-hot
label), and the random augmentations of training images.

Training batches come as an :class:`EpochStream`: epoch ``e``'s order is a function of the seed
and ``e`` alone (not of how many epochs ran before in this process), so a run resumed at epoch
``k`` trains on exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import tensorflow as tf

from rps.data.examples import Examples
from rps.data.images import decode, preprocess

AUTOTUNE = tf.data.AUTOTUNE


class RandomColour(tf.keras.layers.Layer):
    """Random saturation and hue changes of images in [0, 1], in training mode only."""

    def __init__(self, saturation: float, hue: float, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.saturation, self.hue, self.seed = saturation, hue, seed

    def call(self, images, training=None):
        if not training:
            return images
        if self.saturation:
            images = tf.image.random_saturation(images, 1 - self.saturation, 1 + self.saturation, seed=self.seed)
        if self.hue:
            images = tf.image.random_hue(images, self.hue, seed=self.seed + 1)
        return images


def augmenter(cfg, seed: int) -> tf.keras.Sequential:
    """Keras preprocessing layers for ``augment=basic|strong`` (random in training mode only)."""
    layers = [tf.keras.layers.RandomFlip("horizontal", seed=seed)] if cfg.flip else []
    if cfg.rotation:
        layers.append(tf.keras.layers.RandomRotation(cfg.rotation, fill_mode="nearest", seed=seed + 1))
    if cfg.zoom:
        layers.append(tf.keras.layers.RandomZoom(cfg.zoom, fill_mode="nearest", seed=seed + 2))
    if cfg.translation:
        layers.append(tf.keras.layers.RandomTranslation(cfg.translation, cfg.translation, fill_mode="nearest",
                                                        seed=seed + 4))
    if cfg.contrast:
        layers.append(tf.keras.layers.RandomContrast(cfg.contrast, seed=seed + 3))
    if cfg.brightness:
        layers.append(tf.keras.layers.RandomBrightness(cfg.brightness, value_range=(0.0, 1.0), seed=seed + 5))
    if cfg.saturation or cfg.hue:
        layers.append(RandomColour(cfg.saturation, cfg.hue, seed + 6))
    return tf.keras.Sequential(layers, name="augment")


@dataclass
class EpochStream:
    """Training batches for any range of epochs: epoch ``e`` is ``batches(e)``, shuffled with a
    seed made of the run's seed and ``e``; :meth:`epochs` chains them (Keras then reads
    ``steps`` batches per epoch from one stream)."""

    batches: Callable[[tf.Tensor], tf.data.Dataset]  # epoch (a tf.int64 scalar) -> that epoch's batches
    steps: int  # batches per epoch

    def epochs(self, start: int, end: int) -> tf.data.Dataset:
        return tf.data.Dataset.range(start, end).flat_map(self.batches).prefetch(AUTOTUNE)


Batches = Union[tf.data.Dataset, EpochStream]


def _shuffled(elements: tuple, n: int, seed: Optional[int], batch_size: int,
              finish: Callable[[tf.data.Dataset], tf.data.Dataset]) -> Batches:
    """``finish`` batches a dataset of ``elements`` (arrays of ``n`` rows); with a seed, as an
    :class:`EpochStream` whose epoch ``e`` takes the rows in a stateless permutation of (seed, e)."""
    if seed is None:
        return finish(tf.data.Dataset.from_tensor_slices(elements)).prefetch(AUTOTUNE)
    tensors = tuple(tf.convert_to_tensor(e) for e in elements)

    def batches(epoch: tf.Tensor) -> tf.data.Dataset:
        key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=key)
        rows = tf.data.Dataset.from_tensor_slices(order).map(lambda i: tuple(tf.gather(t, i) for t in tensors))
        return finish(rows)

    return EpochStream(batches, -(-n // batch_size))


def make_dataset(
    examples: Examples,
    image_size: int,
    batch_size: int,
    n_classes: int,
    shuffle_seed: int | None = None,
    augment: tf.keras.Sequential | None = None,
) -> Batches:
    """Batches of (image in [0, 1], one-hot label); with a seed, an :class:`EpochStream` shuffled
    anew each epoch; randomly augmented only if an ``augment`` model is given (training only)."""
    def load(encoded, label):
        if examples.from_files:
            encoded = tf.io.read_file(encoded)
        return preprocess(decode(encoded), image_size), tf.one_hot(label, n_classes)

    def finish(ds: tf.data.Dataset) -> tf.data.Dataset:
        ds = ds.map(load, num_parallel_calls=AUTOTUNE).batch(batch_size)
        if augment is not None:
            ds = ds.map(lambda x, y: (tf.clip_by_value(augment(x, training=True), 0.0, 1.0), y))
        return ds

    return _shuffled((list(examples.images), examples.labels), len(examples), shuffle_seed, batch_size, finish)


def make_feature_dataset(
    features: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    n_classes: int,
    shuffle_seed: int | None = None,
) -> Batches:
    """Batches of (cached backbone features, one-hot label), shuffled like :func:`make_dataset`."""
    return _shuffled((features, tf.one_hot(labels, n_classes)), len(labels), shuffle_seed, batch_size,
                     lambda ds: ds.batch(batch_size))


def feature_datasets(features: np.ndarray, labels: np.ndarray, index: dict[str, np.ndarray], batch_size: int,
                     n_classes: int, seed: int) -> dict[str, Batches]:
    """:func:`make_feature_dataset` of each split in ``index`` (rows of ``features``); only
    ``train`` is shuffled (seeded)."""
    return {name: make_feature_dataset(features[i], labels[i], batch_size, n_classes,
                                       shuffle_seed=seed if name == "train" else None)
            for name, i in index.items() if len(i)}  # no validation in a refit


def decoded_images(examples: Examples, count: int) -> list[np.ndarray]:
    """The first ``count`` images as uint8 arrays, for plotting."""
    out = []
    for encoded in examples.images[:count]:
        raw = tf.io.read_file(encoded) if examples.from_files else encoded
        out.append(decode(raw).numpy())
    return out
