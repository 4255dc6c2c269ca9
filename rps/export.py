"""TFLite export of the trained classifier, checked against the SavedModel on the test split."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)
MAX_ACCURACY_GAP = 0.005  # TFLite must match the SavedModel's test accuracy within 0.5 points


def to_tflite(saved_model_dir: Path, quantize: bool = False) -> bytes:
    """Float TFLite flatbuffer of the SavedModel (dynamic-range quantized weights if ``quantize``)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def tflite_predict(content: bytes, batches) -> np.ndarray:
    """Probabilities of the TFLite model for every batch of images."""
    with warnings.catch_warnings():  # tf.lite.Interpreter announces its move to ai-edge-litert
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_content=content)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    probs = []
    for images in batches:
        images = np.asarray(images, dtype=np.float32)
        interpreter.resize_tensor_input(inp["index"], list(images.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], images)
        interpreter.invoke()
        probs.append(interpreter.get_tensor(out["index"]).copy())
    return np.concatenate(probs)
