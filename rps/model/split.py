"""Network surgery: the hub backbone rebuilt in Keras and cut in two at the fine-tuning cut.

Fine-tuning (``backbone.trainable=true``) trains only the top of the backbone
(:meth:`rps.model.backbone.Backbone.unfreeze_top`); everything below the cut is frozen, so its output for
an image never changes. Cached once (:mod:`rps.training.finetune_cache`), it lets phase 2 train the top
alone instead of pushing every image through the whole network at every step.

A SavedModel exposes variables, not layers, so the network is rebuilt from
``tf.keras.applications.MobileNetV2`` (the architecture TF Hub's MobileNet-V2 feature vectors
come from) and the module's variables are copied onto it by order and shape. The rebuilt network
is then checked against the hub module on random images: a backbone that does not map, or maps
but computes something else, raises :class:`SplitUnavailable` and keeps the image path.

The cut: ``backbone.fine_tune_from`` counts the module's trainable variables from the top, as
``unfreeze_top`` does. A layer whose variables straddle that count is trained whole (the count
is rounded up to a layer boundary; on MobileNet-V2 at most a BatchNorm's gamma more). The cached
tensor is the last one below the cut that every path to the output passes through (a residual
block's input is needed twice, so the cut cannot fall inside one); frozen layers between it and
the cut run, frozen, in the upper part.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from rps.common.sizes import resolve_size

log = logging.getLogger(__name__)
keras = tf.keras

ALPHAS = (1.0, 0.35, 0.5, 0.75, 1.3, 1.4)  # the width multipliers Keras' MobileNetV2 builds
MAX_DIFF = 1e-4  # largest |split - module| feature difference accepted, relative to the features' scale
CHECK_IMAGES = 4  # random images of the equality check


class SplitUnavailable(Exception):
    """The backbone cannot be split (the message says why); fine-tuning keeps the image path."""


@dataclass
class SplitBackbone:
    """The backbone as ``upper(lower(image))``, holding copies of the hub module's variables."""

    lower: keras.Model  # images in [0, 1] -> activations at the cache point (frozen)
    upper: keras.Model  # those activations -> feature vector; layers from the cut on trainable
    cache_layer: str  # the layer whose output is cached
    first_trained_layer: str
    trained_variables: int  # of the module's trainable variables (the top ones)
    max_diff: float  # of the equality check
    pairs: list  # (module variable, Keras variable), every variable of the module

    @property
    def activation_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.lower.output.shape[1:])

    def write_back(self) -> None:
        """Copy the (trained) Keras weights into the hub module's variables, so the module, and
        any model exporting it, computes what the split model was trained to."""
        for module_var, keras_var in self.pairs:
            module_var.assign(keras_var)


def _first_kernel(alpha: float) -> tuple[int, ...]:
    """The shape of Keras' MobileNetV2 first variable (the stem's 3x3 kernel) at width ``alpha``:
    32 filters times alpha, rounded as Keras' ``_make_divisible(32 * alpha, 8)`` does."""
    filters = max(8, int(32 * alpha + 4) // 8 * 8)
    return 3, 3, 3, (filters + 8 if filters < 0.9 * 32 * alpha else filters)


def _mobilenet(module, image_size: int) -> tuple[keras.Model, list]:
    """A Keras MobileNetV2 whose variables line up with the module's, and the (module, Keras) pairs."""
    shapes = [tuple(v.shape) for v in module.variables]
    # building a network takes ~1 s: only the widths whose stem has the module's first shape can match
    for alpha in [a for a in ALPHAS if shapes[:1] == [_first_kernel(a)]]:
        net = keras.applications.MobileNetV2(input_shape=(image_size, image_size, 3), alpha=alpha,
                                             include_top=False, pooling="avg", weights=None)
        if [tuple(w.shape) for w in net.weights] == shapes:
            pairs = list(zip(module.variables, net.weights))
            trainable = {id(m) for m in module.trainable_variables}
            if [k.name for m, k in pairs if id(m) in trainable] != [w.name for w in net.trainable_weights]:
                raise SplitUnavailable("its trainable variables are not those of a Keras MobileNetV2")
            for module_var, keras_var in pairs:
                keras_var.assign(module_var)
            return net, pairs
        if len(net.weights) != len(shapes):  # every width has as many: no other width can match
            break
    raise SplitUnavailable(f"its {len(shapes)} variables do not map by order and shape onto a Keras "
                           f"MobileNetV2 (alpha in {ALPHAS}, include_top=False, pooling=avg)")


def _cut_index(net: keras.Model, pairs: list, module, fine_tune_from: float) -> tuple[int, int]:
    """Index in ``net.layers`` of the lowest layer holding one of the top trainable variables, and
    how many trainable variables the layers from there on hold (the count rounded up to whole layers)."""
    trainable = list(module.trainable_variables)
    top = min(resolve_size(fine_tune_from, len(trainable)), len(trainable))
    keras_of = {id(m): k for m, k in pairs}
    owner = {id(w): i for i, layer in enumerate(net.layers) for w in layer.weights}
    cut = min(owner[id(keras_of[id(m)])] for m in trainable[len(trainable) - top:])
    return cut, sum(len(layer.trainable_weights) for layer in net.layers[cut:])


def _producers(layer) -> list:
    inbound = layer._inbound_nodes[0].inbound_layers
    return inbound if isinstance(inbound, list) else [inbound]


def _cache_index(net: keras.Model, cut: int) -> int:
    """The highest layer below ``cut`` whose output alone feeds everything above it (0: none)."""
    position = {id(layer): i for i, layer in enumerate(net.layers)}
    lowest_input = [min((position[id(p)] for p in _producers(layer)), default=i)
                    for i, layer in enumerate(net.layers)]
    for p in range(cut - 1, 0, -1):
        if min(lowest_input[p + 1:]) >= p:
            return p
    return 0


def _upper(net: keras.Model, start: int, cut: int) -> keras.Model:
    """``net.layers[start + 1:]`` re-applied to a new input shaped like layer ``start``'s output.

    Its BatchNorm layers are called with ``training=False``: fine-tuning keeps their moving
    statistics, as the hub module (always called in inference mode) does.
    """
    origin = net.layers[start]._inbound_nodes[0].outputs
    inputs = keras.Input(origin.shape[1:], name=f"{net.layers[start].name}_activations")
    tensors = {id(origin): inputs}
    for i, layer in enumerate(net.layers[start + 1:], start + 1):
        layer.trainable = i >= cut
        node = layer._inbound_nodes[0]
        args, kwargs = tf.nest.map_structure(lambda t: tensors.get(id(t), t), (node.call_args, node.call_kwargs))
        if isinstance(layer, keras.layers.BatchNormalization):
            kwargs = {**kwargs, "training": False}
        tensors[id(node.outputs)] = layer(*args, **kwargs)
    return keras.Model(inputs, tensors[id(net.layers[-1]._inbound_nodes[0].outputs)], name="backbone_upper")


def _lower(net: keras.Model, end: int, image_size: int) -> keras.Model:
    """Images in [0, 1] -> layer ``end``'s output (MobileNetV2 takes inputs in [-1, 1])."""
    below = keras.Model(net.input, net.layers[end]._inbound_nodes[0].outputs)
    below.trainable = False
    images = keras.Input((image_size, image_size, 3), name="image")
    return keras.Model(images, below(keras.layers.Rescaling(2.0, -1.0)(images), training=False),
                       name="backbone_lower")


def _max_diff(backbone, lower: keras.Model, upper: keras.Model, image_size: int, seed: int = 0) -> float:
    """Largest difference of ``upper(lower(x))`` from the hub module's features, relative to their
    largest magnitude, on random images in [0, 1]."""
    images = tf.constant(np.random.default_rng(seed).random((CHECK_IMAGES, image_size, image_size, 3), np.float32))
    reference = backbone(images).numpy()
    split = upper(lower(images, training=False), training=False).numpy()
    if split.shape != reference.shape:
        return float("inf")
    return float(np.abs(split - reference).max() / max(np.abs(reference).max(), 1e-6))


def split_backbone(backbone, image_size: int, fine_tune_from: float) -> SplitBackbone:
    """``backbone`` (a :class:`rps.model.Backbone`) as lower and upper Keras models at the cut
    ``fine_tune_from``; raises :class:`SplitUnavailable` saying why it cannot be."""
    module = backbone.resolved_object
    net, pairs = _mobilenet(module, image_size)
    cut, trained = _cut_index(net, pairs, module, fine_tune_from)
    cache = _cache_index(net, cut)
    if cache == 0:
        raise SplitUnavailable(f"nothing below the cut to cache (it is at {net.layers[cut].name}, the first layer)")
    upper, lower = _upper(net, cache, cut), _lower(net, cache, image_size)
    diff = _max_diff(backbone, lower, upper, image_size)
    if not diff <= MAX_DIFF:
        raise SplitUnavailable(f"the rebuilt network differs from the module (relative |diff| {diff:.2g} > {MAX_DIFF:g})")
    log.info("Backbone split below %s (cached) / from %s (trained, %d variables); equal to the module to %.1e",
             net.layers[cache].name, net.layers[cut].name, trained, diff)
    return SplitBackbone(lower, upper, net.layers[cache].name, net.layers[cut].name, trained, diff, pairs)
