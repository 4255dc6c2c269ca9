"""tf.data pipelines: batches of (image in [0, 1], one-hot label) or of (cached features, one-hot
label), and the random augmentations of training images."""

from __future__ import annotations

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


def make_dataset(
    examples: Examples,
    image_size: int,
    batch_size: int,
    n_classes: int,
    shuffle_seed: int | None = None,
    augment: tf.keras.Sequential | None = None,
) -> tf.data.Dataset:
    """Batches of (image in [0, 1], one-hot label); shuffled each epoch only if a seed is given,
    randomly augmented only if an ``augment`` model is given (training pipelines only)."""
    ds = tf.data.Dataset.from_tensor_slices((list(examples.images), examples.labels))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(examples), seed=shuffle_seed, reshuffle_each_iteration=True)

    def load(encoded, label):
        if examples.from_files:
            encoded = tf.io.read_file(encoded)
        return preprocess(decode(encoded), image_size), tf.one_hot(label, n_classes)

    ds = ds.map(load, num_parallel_calls=AUTOTUNE).batch(batch_size)
    if augment is not None:
        ds = ds.map(lambda x, y: (tf.clip_by_value(augment(x, training=True), 0.0, 1.0), y))
    return ds.prefetch(AUTOTUNE)


def make_feature_dataset(
    features: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    n_classes: int,
    shuffle_seed: int | None = None,
) -> tf.data.Dataset:
    """Batches of (cached backbone features, one-hot label), shuffled like :func:`make_dataset`."""
    ds = tf.data.Dataset.from_tensor_slices((features, tf.one_hot(labels, n_classes)))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(labels), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def feature_datasets(features: np.ndarray, labels: np.ndarray, index: dict[str, np.ndarray], batch_size: int,
                     n_classes: int, seed: int) -> dict[str, tf.data.Dataset]:
    """:func:`make_feature_dataset` of each split in ``index`` (rows of ``features``); only
    ``train`` is shuffled (seeded)."""
    return {name: make_feature_dataset(features[i], labels[i], batch_size, n_classes,
                                       shuffle_seed=seed if name == "train" else None)
            for name, i in index.items()}


def decoded_images(examples: Examples, count: int) -> list[np.ndarray]:
    """The first ``count`` images as uint8 arrays, for plotting."""
    out = []
    for encoded in examples.images[:count]:
        raw = tf.io.read_file(encoded) if examples.from_files else encoded
        out.append(decode(raw).numpy())
    return out
