"""Colour and shape statistics of images: cheap features to group images by the hand they show
(``split.group_features=colour`` or ``mix``; rps.data.splits clusters them).

A hand's skin and nails have one colour across its frames, and its pose one silhouette, while the
backbone's features describe *what* the image shows (a rock, a paper) more than *whose* hand. Per
image: a hue histogram of its coloured pixels (saturation >= :data:`SATURATED`: the hand, not the
white or grey background) and their mean red, green and blue, histograms of saturation and
brightness over all pixels, the fraction of coloured pixels (how much of the image the hand
fills), and a grey thumbnail (the silhouette).

Images are decoded and reduced one at a time in a tf.data pipeline, batch by batch: only the
statistics (:data:`DIMENSIONS` floats per image) are kept, never the decoded images.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from rps.data.examples import Examples
from rps.data.images import decode

HUE_BINS = 12  # hue histogram of the coloured pixels
LEVEL_BINS = 8  # saturation and brightness histograms
THUMBNAIL = 8  # the grey thumbnail's side, in pixels
SIDE = 100  # every statistic is taken on the image shrunk to SIDE x SIDE (area averaging)
SATURATED = 0.15  # a pixel this saturated or more is coloured (the hand); below it, background
COLOUR_DIMENSIONS = HUE_BINS + 2 * LEVEL_BINS + 3 + 1
DIMENSIONS = COLOUR_DIMENSIONS + THUMBNAIL * THUMBNAIL


def _histogram(values: tf.Tensor, bins: int, weights: tf.Tensor) -> tf.Tensor:
    """Weighted histogram of ``values`` in [0, 1] over ``bins`` equal bins (the last one closed)."""
    index = tf.minimum(tf.cast(values * bins, tf.int32), bins - 1)
    return tf.math.bincount(tf.reshape(index, [-1]), weights=tf.reshape(weights, [-1]), minlength=bins,
                            maxlength=bins, dtype=tf.float32)


def _statistics(image: tf.Tensor) -> tf.Tensor:
    """uint8 [H, W, 3] -> float32 [:data:`DIMENSIONS`]: colour histograms, the coloured pixels' mean
    colour and fraction, thumbnail (all on the image shrunk to :data:`SIDE` pixels: 9x cheaper)."""
    rgb = tf.image.resize(tf.image.convert_image_dtype(image, tf.float32), (SIDE, SIDE), method="area")
    hsv = tf.image.rgb_to_hsv(rgb)
    coloured = tf.cast(hsv[..., 1] >= SATURATED, tf.float32)
    everywhere = tf.ones_like(coloured)
    n_pixels, n_coloured = tf.reduce_sum(everywhere), tf.maximum(tf.reduce_sum(coloured), 1.0)
    thumbnail = tf.image.resize(tf.image.rgb_to_grayscale(rgb), (THUMBNAIL, THUMBNAIL), method="area")
    return tf.concat([_histogram(hsv[..., 0], HUE_BINS, coloured) / n_coloured,
                      _histogram(hsv[..., 1], LEVEL_BINS, everywhere) / n_pixels,
                      _histogram(hsv[..., 2], LEVEL_BINS, everywhere) / n_pixels,
                      tf.reduce_sum(rgb * coloured[..., None], axis=[0, 1]) / n_coloured,
                      [tf.reduce_sum(coloured) / n_pixels], tf.reshape(thumbnail, [-1])], axis=0)


def appearance_statistics(examples: Examples, batch_size: int = 64) -> np.ndarray:
    """The raw statistics of every image of ``examples``, in order: float32 [n, :data:`DIMENSIONS`].
    Deterministic (the same images give the same numbers); memory: a batch of decoded images."""
    if not len(examples):
        return np.zeros((0, DIMENSIONS), np.float32)

    def load(encoded):
        return _statistics(decode(tf.io.read_file(encoded) if examples.from_files else encoded))

    ds = tf.data.Dataset.from_tensor_slices(list(examples.images))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)
    return np.concatenate(list(ds.as_numpy_iterator()))


def appearance_features(examples: Examples) -> np.ndarray:
    """What ``colour`` grouping clusters: :func:`appearance_statistics`, each column standardized
    over ``examples`` (a constant column becomes 0), the colour columns and the thumbnail's each
    scaled to the same total weight (the 64 thumbnail pixels would otherwise outvote the colour)."""
    stats = appearance_statistics(examples).astype(np.float64)
    spread = stats.std(axis=0)
    standardized = (stats - stats.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    varying = spread > 0  # a constant column is 0 after standardizing: it must not count in its block's weight
    colour = np.arange(DIMENSIONS) < COLOUR_DIMENSIONS  # the colour block; the rest is the thumbnail
    weights = np.zeros(DIMENSIONS)
    for block in (colour, ~colour):
        weights[block] = max(int(varying[block].sum()), 1) ** -0.5
    return standardized * weights
