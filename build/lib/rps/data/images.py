"""How an image becomes the model's input: one definition for training, prediction and serving.

Decoding (JPEG/PNG/BMP/GIF bytes -> uint8 RGB) and preprocessing (scale to [0, 1], bilinear
resize to the backbone's square input) are TensorFlow ops, applied the same way by the tf.data
pipelines (rps.data.pipelines), the predict CLI and the logged MLflow model (rps.inference).
TensorFlow is imported on first use: the feature cache's key (:data:`PREPROCESSING`) is read by
config checks that run before anything heavy is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf

# Describes decode + preprocess; part of the feature cache key (bump it when they change).
PREPROCESSING = "decode_image(channels=3) -> convert_image_dtype(float32) -> resize(bilinear)"


def decode(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG/PNG/BMP/GIF bytes -> uint8 [H, W, 3] (grey and RGBA images become RGB)."""
    import tensorflow as tf

    return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def preprocess(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Image(s), uint8 (0-255) or float (0-1) -> float32 in [0, 1], resized to ``image_size`` squares."""
    import tensorflow as tf

    image = tf.image.convert_image_dtype(image, tf.float32)
    return tf.image.resize(image, (image_size, image_size))
