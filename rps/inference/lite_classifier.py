"""A TFLite file a run exported (``export.formats``), called like the SavedModel's
:class:`~rps.inference.classifier.Classifier`: images in any accepted form in, probabilities out.

Its class names and input size travel inside the file (TFLite metadata ``rps_model.json``,
rps.model.formats); a ``rps_model.json`` beside the file is read when the file has none. It runs
on LiteRT's XNNPACK delegate, whatever the format (float32, float16, dynamic range, int8).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from rps.common.errors import ResourceError
from rps.inference.classifier import as_batch
from rps.model import formats, lite

MAX_TFLITE_BYTES = 2 * 1024**3  # the flatbuffer format's own limit


def _info(path: Path, content: bytes) -> dict:
    try:
        info = formats.read_info(content)
    except ValueError as err:
        raise ResourceError(f"{path} is not a TFLite model rps can use: {err}.") from err
    beside = path.with_name(formats.INFO_METADATA)
    if info is None and beside.is_file() and beside.stat().st_size <= formats.MAX_INFO_BYTES:
        try:
            info = json.loads(beside.read_text())
            int(info["image_size"]), list(info["class_names"])
        except (ValueError, KeyError, TypeError) as err:
            raise ResourceError(f"{beside} is not an rps model's info ({type(err).__name__}: {err}).") from err
    if info is None:
        raise ResourceError(f"{path} carries no {formats.INFO_METADATA} (class names, input size): export it "
                            f"with an rps run (export.formats=[...]), or put its {formats.INFO_METADATA} beside it.")
    return info


class LiteClassifier:
    """A ``.tflite`` file exported by rps: ``class_names``, ``image_size``, ``engine`` and
    ``__call__(images) -> probabilities``, as :class:`~rps.inference.classifier.Classifier`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if self.path.stat().st_size > MAX_TFLITE_BYTES:
            raise ResourceError(f"{path} is larger than a TFLite model can be ({MAX_TFLITE_BYTES} bytes).")
        content = self.path.read_bytes()
        info = _info(self.path, content)
        self.class_names, self.image_size = list(info["class_names"]), int(info["image_size"])
        try:
            self.model = lite.LiteModel(content)
        except Exception as err:  # LiteRT raises ValueError/RuntimeError for files it cannot use
            raise ResourceError(f"{path} cannot be loaded by LiteRT: {str(err).splitlines()[0][:300]}") from err
        self.engine = f"{lite.engine_name()}, {self.path.name}"
        import tensorflow  # noqa: F401  (images are decoded and resized with it: loaded with the model, not on the first images)

    def __call__(self, images: Any) -> np.ndarray:
        return self.model(as_batch(images, self.image_size))
