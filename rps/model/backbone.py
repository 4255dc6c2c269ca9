"""The backbone: a TF Hub feature extractor (frozen, or with its top unfrozen for fine-tuning),
and its forward pass as a plain function of a batch (features for the cache).

The full model is ``Input(image) -> backbone (hub.KerasLayer) -> head`` (rps.model.head); the
exported one, images -> probabilities, is rps.model.export.
"""

from __future__ import annotations

import logging
import re
import sys
import time

import numpy as np

import tensorflow as tf
import tensorflow_hub as hub

from rps.common.errors import ConfigError, ResourceError
from rps.common.progress import Progress
from rps.common.sizes import resolve_size

log = logging.getLogger(__name__)
keras = tf.keras  # tf-keras (Keras 2): TF_USE_LEGACY_KERAS=1 is set by rps/__init__.py
# hub.KerasLayer asks Keras 3 first for the SavedModel load context (`keras.saving.legacy`), which
# imports all of Keras 3 and scikit-learn (~1 s of every run's start, measured 2026-12-02) to read
# a context tf-keras models never set. Refused, it falls back to tf.keras's (tf-keras's) own.
sys.modules.setdefault("keras.saving.legacy.saved_model", None)


class Backbone(hub.KerasLayer):
    """``hub.KerasLayer`` for fine-tuning by the Keras guide's recipe.

    It always runs the module in inference mode (BatchNorm keeps its moving statistics, also
    while its weights are trained), and :meth:`unfreeze_top` makes only the top of the module's
    trainable variables trainable (a reusable SavedModel lists them bottom to top).
    """

    def __init__(self, handle, **kwargs):
        super().__init__(handle, **kwargs)
        self.top_variables: int | None = None  # None: all of them, when trainable

    def unfreeze_top(self, fine_tune_from: float) -> int:
        """Make the top ``fine_tune_from`` (fraction < 1, or count) trainable; returns the count."""
        self.trainable = True
        total = len(super().trainable_weights)
        count = min(resolve_size(fine_tune_from, total), total)
        self.top_variables = count
        return count

    @property
    def trainable_weights(self):
        weights = super().trainable_weights
        return weights[len(weights) - self.top_variables:] if weights and self.top_variables else weights

    @property
    def non_trainable_weights(self):
        top = {id(w) for w in self.trainable_weights}
        return [w for w in super().trainable_weights if id(w) not in top] + super().non_trainable_weights

    def call(self, inputs, training=None):
        return super().call(inputs, training=False)


def load_backbone(handle: str, image_size: int) -> tuple[Backbone, int]:
    """The backbone layer (frozen) and the length of its feature vector.

    One forward pass on a blank image checks that the backbone accepts ``image_size``.
    """
    try:
        layer = Backbone(handle, trainable=False, name="backbone")
    except Exception as err:  # TF Hub surfaces network, format and file errors alike
        raise ResourceError(
            f"TF Hub could not load the backbone {handle}: {err}. For a URL handle set "
            "TFHUB_CACHE_DIR to a folder holding its cached SavedModel (<sha1 of the URL>/); "
            "otherwise set backbone.handle to a valid SavedModel directory."
        ) from err
    try:
        features = layer(tf.zeros((1, image_size, image_size, 3)))
    except Exception as err:
        accepted = sorted(set(re.findall(r"TensorSpec\(shape=(\([^)]*\))", str(err))))
        detail = f"it takes inputs of shape {' or '.join(accepted)}" if accepted else str(err).splitlines()[0]
        raise ConfigError(
            f"backbone.image_size={image_size} is not accepted by the backbone {handle}: {detail}. "
            "Set backbone.image_size to the size it was trained for (224 for MobileNet-V2)."
        ) from err
    if features.shape.rank != 2:
        raise ResourceError(
            f"The backbone {handle} returns shape {features.shape}, not a [batch, features] "
            "feature vector. Use a TF Hub *feature_vector* model."
        )
    return layer, int(features.shape[-1])


def tf_forward(backbone: Backbone):
    """The backbone in TensorFlow as a function of a batch: features as a NumPy array, computed
    a few images at a time (:func:`rps.model.lite.chunked`: faster and smaller than whole batches)."""
    from rps.model.lite import chunked

    forward = tf.function(lambda x: backbone(x, training=False), reduce_retracing=True)
    return lambda batch: chunked(lambda chunk: forward(chunk).numpy(), batch)


def extract_features(forward, images: tf.data.Dataset, total: int) -> np.ndarray:
    """``forward(batch)`` of every batch of ``images``, showing its progress (images/s at the end)."""
    progress = Progress(total, "image", log)
    out, start, done = [], time.monotonic(), 0
    for batch in images:
        out.append(np.asarray(forward(batch)))
        done += len(out[-1])
        progress.update(done)
    seconds = time.monotonic() - start
    log.info("Backbone features of %d images in %.1f s (%.1f images/s)", total, seconds, total / max(seconds, 1e-9))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def count_params(*parts: keras.layers.Layer) -> dict[str, int]:
    """Trainable and frozen parameters of a model, or of the parts it is made of."""
    trainable = sum(int(tf.size(w)) for part in parts for w in part.trainable_weights)
    frozen = sum(int(tf.size(w)) for part in parts for w in part.non_trainable_weights)
    return {"trainable": trainable, "frozen": frozen}
