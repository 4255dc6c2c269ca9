"""TensorFlow Lite on XNNPACK: the fast CPU path for models whose weights do not change.

Frozen-backbone features (the feature cache), the predict CLI and the served MLflow model run
float32 TFLite conversions of their TensorFlow models through LiteRT (``ai-edge-litert``,
pinned in pyproject.toml), which applies the XNNPACK delegate to float models and uses every
core it may. LiteRT rather than ``tf.lite.Interpreter``: TensorFlow 2.21 deprecates its own
interpreter in LiteRT's favour and warns on each use; LiteRT is the maintained one. Outputs
agree with TensorFlow's to ~1e-5. Conversions (seconds: a frozen MobileNet-V2 ~1.5 s here, a
SavedModel more) are cached on disk by a key of what determines them. Fine-tuning keeps
TensorFlow: its weights change.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from rps.common.files import atomic_write, cache_dir, exclusive

log = logging.getLogger(__name__)
MAX_ACCURACY_GAP = 0.005  # an exported TFLite model must match the SavedModel's test accuracy within 0.5 points
BATCH = 8  # images per forward call of a frozen model, either engine: see chunked()


def threads() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def engine_name() -> str:
    from importlib.metadata import version

    return f"xnnpack (LiteRT {version('ai-edge-litert')}, {threads()} threads)"


def from_saved_model(saved_model_dir: Path, quantize: bool = False) -> bytes:
    """Float32 TFLite flatbuffer of a SavedModel (dynamic-range quantized weights if ``quantize``)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def from_layer(layer, image_size: int) -> bytes:
    """Float32 TFLite flatbuffer of a Keras layer (a frozen backbone) on ``image_size`` squares.

    The function itself is the converter's ``trackable_obj``: TensorFlow then converts its graph
    with the weights frozen in, instead of first saving the layer as a SavedModel (which traces
    every Keras layer again) and loading it back. For the real MobileNet-V2 at 224 px: outputs
    identical to the old conversion's on 16 random images (both within 3e-5 of TensorFlow), the
    same XNNPACK speed, 1.5 s instead of 7.8 s (2026-12-03, 2-core AMD EPYC, AVX-512).
    """
    import tensorflow as tf

    spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32)
    forward = tf.function(lambda x: layer(x, training=False), input_signature=[spec])
    return tf.lite.TFLiteConverter.from_concrete_functions([forward.get_concrete_function()], forward).convert()


def conversion_key(*parts: str) -> str:
    """A cache key of what determines a conversion (with the TensorFlow version that converts)."""
    import tensorflow as tf

    return hashlib.sha256("\0".join(("rps-tflite/1", tf.__version__, *parts)).encode()).hexdigest()[:40]


def cached_conversion(key: str, convert: Callable[[], bytes], folder: Path | None = None) -> bytes:
    """The flatbuffer stored under ``key``, else ``convert()``'s (then stored; best effort)."""
    folder = Path(folder or cache_dir("tflite"))
    path = folder / f"{key}.tflite"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with exclusive(folder / f"{key}.lock"):  # parallel jobs convert once
            if path.is_file():
                return path.read_bytes()
            content = convert()
            with atomic_write(path) as f:
                f.write(content)
            return content
    except OSError as err:  # an unwritable cache costs the conversion's time, nothing else
        log.warning("TFLite conversion cache %s unusable (%s); converting without it.", folder, err)
        return convert()


def chunked(forward: Callable, images, size: int = BATCH) -> np.ndarray:
    """``forward`` over ``images`` ``size`` images at a time, the outputs concatenated.

    On 2 CPU cores MobileNet-V2 inference is fastest and smallest in small batches: TensorFlow
    ran 28-36 images/s at 4-8 images per call against 20 at 64, with 0.6 GB less peak memory;
    XNNPACK 164-168 at 4-8 against 160 at 32 (2026-11-26, 2-core AMD EPYC).
    """
    if images.shape[0] <= size:
        return np.asarray(forward(images))
    return np.concatenate([np.asarray(forward(images[i : i + size])) for i in range(0, images.shape[0], size)])


class LiteModel:
    """Runs a TFLite flatbuffer on XNNPACK: float32 batches in, the model's output out."""

    def __init__(self, content: bytes, batch: int = BATCH):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=content, num_threads=threads())
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.batch, self.shape = batch, None

    def _run(self, images: np.ndarray) -> np.ndarray:
        if images.shape != self.shape:
            self.interpreter.resize_tensor_input(self.input, list(images.shape))
            self.interpreter.allocate_tensors()
            self.shape = images.shape
        self.interpreter.set_tensor(self.input, images)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output).copy()

    def __call__(self, images) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        if not len(images):
            return np.zeros((0, *self.interpreter.get_output_details()[0]["shape"][1:]), np.float32)
        return chunked(self._run, images, self.batch)
