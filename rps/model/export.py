"""The trained classifier as a self-contained SavedModel, and the metadata that travels with it."""

from __future__ import annotations

import os

import tensorflow as tf

from rps.model.backbone import Backbone

keras = tf.keras
INFO_FILE = "rps_model.json"  # beside the SavedModel: class names, input size (rps.inference reads it)


def model_info(class_names: list[str], image_size: int, backbone: str = "backbone", temperature: float = 1.0) -> dict:
    """The exported model's metadata (in its MLflow metadata and in ``rps_model.json``)."""
    return {
        "class_names": list(class_names),
        "image_size": image_size,
        "backbone": backbone,
        "input": "images: float32 RGB in [0, 1] of shape [batch, {0}, {0}, 3], uint8 arrays of any size, "
                 "or encoded JPEG/PNG/BMP/GIF (bytes or base64 text)".format(image_size),
        "output": "float32 class probabilities, shape [batch, n_classes], in class_names order",
        "temperature": temperature,  # 1.0, or the temperature fitted on validation that divides the logits
    }


class ExportedClassifier(tf.Module):
    """The trained classifier as a self-contained SavedModel.

    Calling it maps float32 images in [0, 1] of shape [batch, image_size, image_size, 3] to
    class probabilities. The backbone's weights are stored inside (loading needs neither the
    TF Hub cache nor the network), and so are ``class_names`` and ``image_size``. It holds the
    backbone's module and the head's Dense weights directly, not the Keras models around them:
    saving Keras' object graph took twice as long for the same function (6 s vs 3 s here).
    ``temperature`` divides the last layer's logits (temperature scaling: the same predicted
    classes, softer probabilities for ``temperature > 1``).
    """

    def __init__(self, backbone: Backbone, head: keras.Model, class_names: list[str], image_size: int,
                 temperature: float = 1.0):
        super().__init__(name="rps_classifier")
        self.backbone = backbone.resolved_object  # the hub module whose variables were trained
        dense = [layer for layer in head.layers if isinstance(layer, keras.layers.Dense)]
        self.kernels = [layer.kernel for layer in dense]
        self.biases = [layer.bias for layer in dense]
        self._activations = [layer.activation for layer in dense]  # dropout: identity at inference
        self.class_names = tf.Variable(class_names, trainable=False, dtype=tf.string)
        self.image_size = tf.Variable(image_size, trainable=False, dtype=tf.int32)
        self.temperature = tf.Variable(temperature, trainable=False, dtype=tf.float32)
        spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="image")
        self.__call__ = tf.function(self._forward, input_signature=[spec])

    def _forward(self, image: tf.Tensor) -> tf.Tensor:
        x = self.backbone(image, training=False)
        last = len(self.kernels) - 1
        for i, (kernel, bias, activation) in enumerate(zip(self.kernels, self.biases, self._activations)):
            logits = tf.matmul(x, kernel) + bias
            x = activation(logits / self.temperature if i == last else logits)
        return x

    def save(self, path: str) -> None:
        tf.saved_model.save(self, path, signatures={"serving_default": self.__call__})


class EnsembleClassifier(tf.Module):
    """Several exported classifiers as one SavedModel with the same interface: the mean of their
    class probabilities, and with ``flip`` also of each member's on the horizontally mirrored image
    (test-time augmentation: every member runs twice). Members are SavedModels written by
    :class:`ExportedClassifier`, given as folders or as already loaded modules (their variables are
    saved again inside this one)."""

    def __init__(self, members: list, class_names: list[str], image_size: int, flip: bool = False):
        super().__init__(name="rps_ensemble")
        self.members = [tf.saved_model.load(str(m)) if isinstance(m, (str, os.PathLike)) else m for m in members]
        self.flip = flip
        self.class_names = tf.Variable(class_names, trainable=False, dtype=tf.string)
        self.image_size = tf.Variable(image_size, trainable=False, dtype=tf.int32)
        spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="image")
        self.__call__ = tf.function(self._forward, input_signature=[spec])

    def _forward(self, image: tf.Tensor) -> tf.Tensor:
        views = [image, tf.image.flip_left_right(image)] if self.flip else [image]
        return tf.add_n([member(view) for member in self.members for view in views]) / (len(self.members) * len(views))

    def save(self, path: str) -> None:
        tf.saved_model.save(self, path, signatures={"serving_default": self.__call__})
