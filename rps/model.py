"""Model: a frozen TF Hub feature extractor followed by a small trainable head.

The full model is ``Input(image) -> backbone (hub.KerasLayer) -> head``, where ``head`` is its
own Keras model (``[Dense(relu)] -> Dropout -> Dense(softmax)``) taking the feature vector.
Keeping the head separate means the same weights can be trained on image batches or on
precomputed features, and the exported model always maps images to class probabilities.
"""

from __future__ import annotations

import logging
import re
import time

import numpy as np

import tensorflow as tf
import tensorflow_hub as hub
from omegaconf import DictConfig

from rps.config import resolve_size
from rps.errors import ConfigError, ResourceError

log = logging.getLogger(__name__)
keras = tf.keras  # tf-keras (Keras 2): TF_USE_LEGACY_KERAS=1 is set by rps/__init__.py


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


def build_head(feature_dim: int, n_classes: int, cfg: DictConfig) -> keras.Model:
    """``[Dense(hidden_units, relu)] -> Dropout(dropout) -> Dense(n_classes, softmax)``,
    with an optional L2 penalty (``l2``) on the Dense kernels."""
    l2 = keras.regularizers.l2(cfg.l2) if cfg.l2 else None
    layers = [keras.layers.InputLayer(input_shape=(feature_dim,))]
    if cfg.hidden_units:
        layers.append(keras.layers.Dense(cfg.hidden_units, activation="relu", kernel_regularizer=l2))
    layers += [
        keras.layers.Dropout(cfg.dropout),
        keras.layers.Dense(n_classes, activation="softmax", kernel_regularizer=l2, name="probabilities"),
    ]
    return keras.Sequential(layers, name="head")


def build_classifier(backbone: Backbone, head: keras.Model, image_size: int) -> keras.Model:
    """Images (float32 in [0, 1], ``image_size`` square) -> class probabilities."""
    return keras.Sequential(
        [keras.layers.InputLayer(input_shape=(image_size, image_size, 3)), backbone, head],
        name="rps_classifier",
    )


def make_optimizer(cfg: DictConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """The optimizer; with ``schedule=cosine`` its lr decays to 0 over ``total_steps``."""
    lr = keras.optimizers.schedules.CosineDecay(cfg.lr, total_steps) if cfg.schedule == "cosine" else cfg.lr
    if cfg.name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=cfg.momentum)
    return keras.optimizers.Adam(learning_rate=lr)


def compile_for_training(
    model: keras.Model, optimizer_cfg: DictConfig, total_steps: int = 1, label_smoothing: float = 0.0
) -> None:
    """Softmax outputs pair with a probability loss (``from_logits=False``), unlike the tutorial."""
    model.compile(
        optimizer=make_optimizer(optimizer_cfg, total_steps),
        loss=keras.losses.CategoricalCrossentropy(from_logits=False, label_smoothing=label_smoothing),
        metrics=["accuracy"],
    )


def tf_forward(backbone: Backbone):
    """The backbone in TensorFlow as a function of a batch: features as a NumPy array, computed
    a few images at a time (:func:`rps.lite.chunked`: faster and smaller than whole batches)."""
    from rps.lite import chunked

    forward = tf.function(lambda x: backbone(x, training=False), reduce_retracing=True)
    return lambda batch: chunked(lambda chunk: forward(chunk).numpy(), batch)


def extract_features(forward, images: tf.data.Dataset, total: int) -> np.ndarray:
    """``forward(batch)`` of every batch of ``images``, with a progress bar (images/s at the end)."""
    progress = keras.utils.Progbar(total, unit_name="image", stateful_metrics=["images/s"])
    out, start, done = [], time.monotonic(), 0
    for batch in images:
        out.append(np.asarray(forward(batch)))
        done += len(out[-1])
        progress.update(done, values=[("images/s", done / max(time.monotonic() - start, 1e-9))])
    seconds = time.monotonic() - start
    log.info("Backbone features of %d images in %.1f s (%.1f images/s)", total, seconds, total / max(seconds, 1e-9))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def count_params(*parts: keras.layers.Layer) -> dict[str, int]:
    """Trainable and frozen parameters of a model, or of the parts it is made of."""
    trainable = sum(int(tf.size(w)) for part in parts for w in part.trainable_weights)
    frozen = sum(int(tf.size(w)) for part in parts for w in part.non_trainable_weights)
    return {"trainable": trainable, "frozen": frozen}


class ExportedClassifier(tf.Module):
    """The trained classifier as a self-contained SavedModel.

    Calling it maps float32 images in [0, 1] of shape [batch, image_size, image_size, 3] to
    class probabilities. The backbone's weights are stored inside (loading needs neither the
    TF Hub cache nor the network), and so are ``class_names`` and ``image_size``. It holds the
    backbone's module and the head's Dense weights directly, not the Keras models around them:
    saving Keras' object graph took twice as long for the same function (6 s vs 3 s here).
    """

    def __init__(self, backbone: Backbone, head: keras.Model, class_names: list[str], image_size: int):
        super().__init__(name="rps_classifier")
        self.backbone = backbone.resolved_object  # the hub module whose variables were trained
        dense = [layer for layer in head.layers if isinstance(layer, keras.layers.Dense)]
        self.kernels = [layer.kernel for layer in dense]
        self.biases = [layer.bias for layer in dense]
        self._activations = [layer.activation for layer in dense]  # dropout: identity at inference
        self.class_names = tf.Variable(class_names, trainable=False, dtype=tf.string)
        self.image_size = tf.Variable(image_size, trainable=False, dtype=tf.int32)
        spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="image")
        self.__call__ = tf.function(self._forward, input_signature=[spec])

    def _forward(self, image: tf.Tensor) -> tf.Tensor:
        x = self.backbone(image, training=False)
        for kernel, bias, activation in zip(self.kernels, self.biases, self._activations):
            x = activation(tf.matmul(x, kernel) + bias)
        return x

    def save(self, path: str) -> None:
        tf.saved_model.save(self, path, signatures={"serving_default": self.__call__})
