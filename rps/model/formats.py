"""The trained classifier in the TFLite formats a run can export, and the metadata inside each file.

Each format is a conversion of the run's one SavedModel (``tf.lite.TFLiteConverter``):

- ``float32``: the same weights and arithmetic (outputs agree with TensorFlow's to ~1e-6);
- ``float16``: weights stored as float16 (half the size), computed in float32;
- ``dynamic_range``: weights stored as int8, activations quantized on the fly;
- ``int8``: weights and activations int8 (integer-only kernels), calibrated on a representative
  sample of training images; float32 input and output, so callers see no difference.

Every file carries ``rps_model.json`` (class names, input size) as TFLite metadata, so one
``.tflite`` file is a complete model for ``rps.predict``. TensorFlow is imported only to convert.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

FORMATS = ("float32", "float16", "dynamic_range", "int8")
INFO_METADATA = "rps_model.json"  # the metadata entry's name (the same JSON as beside a SavedModel)
MAX_INFO_BYTES = 64 * 1024  # a model's info is ~0.5 kB: more is not rps's, and is not read
# How far a format's test accuracy may fall from the SavedModel's before rps warns (fractions; the
# quantized formats round weights or activations, so they are allowed more).
TOLERANCE = {"float32": 0.005, "float16": 0.01, "dynamic_range": 0.02, "int8": 0.05}


def file_name(fmt: str) -> str:
    return f"model_{fmt}.tflite"


def convert(saved_model_dir: Path, fmt: str, representative: Optional[Callable[[], Iterable[np.ndarray]]] = None) -> bytes:
    """The SavedModel as a TFLite flatbuffer of format ``fmt`` (``int8`` needs ``representative``:
    a callable yielding single float32 images ``[1, size, size, 3]`` from the training split)."""
    import tensorflow as tf

    if fmt not in FORMATS:
        raise ValueError(f"unknown TFLite format {fmt!r}; one of {', '.join(FORMATS)}")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if fmt != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if fmt == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if fmt == "int8":
        if representative is None:
            raise ValueError("int8 needs a representative dataset")
        converter.representative_dataset = lambda: ([image] for image in representative())
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def with_info(content: bytes, info: dict) -> bytes:
    """``content`` with ``info`` stored as its :data:`INFO_METADATA` metadata entry (replacing one)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    model.metadata = [m for m in (model.metadata or []) if m.name != INFO_METADATA.encode()]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(info, indent=2).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = INFO_METADATA, len(model.buffers) - 1
    model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_info(content: bytes) -> Optional[dict]:
    """The :data:`INFO_METADATA` JSON of a TFLite flatbuffer, or None when it has none.

    Raises ``ValueError`` when ``content`` is not a TFLite model or its entry is not rps's JSON.
    """
    from ai_edge_litert import schema_py_generated as schema

    if len(content) < 8 or content[4:8] != b"TFL3":
        raise ValueError("not a TFLite model (no TFL3 identifier)")
    try:
        model = schema.Model.GetRootAs(content, 0)
        entries = [model.Metadata(i) for i in range(model.MetadataLength())]
        found = next((m for m in entries if m.Name() == INFO_METADATA.encode()), None)
        if found is None:
            return None
        buffer = model.Buffers(found.Buffer())
        if buffer.DataLength() > MAX_INFO_BYTES:
            raise ValueError(f"its {INFO_METADATA} entry is {buffer.DataLength()} bytes (at most {MAX_INFO_BYTES})")
        info = json.loads(buffer.DataAsNumpy().tobytes())
    except (IndexError, TypeError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"damaged TFLite model or {INFO_METADATA} entry ({type(err).__name__})") from err
    if not isinstance(info, dict) or not isinstance(info.get("class_names"), list) \
            or not isinstance(info.get("image_size"), int):
        raise ValueError(f"its {INFO_METADATA} entry has no class_names list and image_size")
    return info
