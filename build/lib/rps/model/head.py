"""The trainable head on the backbone's feature vector, the full classifier, and how both are
compiled for training.

The head is its own Keras model (``[Dense(relu)] -> Dropout -> Dense(softmax)``) taking the
feature vector, so the same weights train on image batches or on cached features.
"""

from __future__ import annotations

import tensorflow as tf
from omegaconf import DictConfig

from rps.model.backbone import Backbone

keras = tf.keras  # tf-keras (Keras 2): TF_USE_LEGACY_KERAS=1 is set by rps/__init__.py


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
