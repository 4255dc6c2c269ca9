"""The trained classifier as users call it: images in any common form in, class probabilities out.

:class:`Classifier` wraps a SavedModel written by a run (``rps_model.json`` beside it names the
classes and the input size). It accepts

- float arrays ``[n, size, size, 3]`` in [0, 1] (the training input, taken as is);
- uint8 arrays ``[n, h, w, 3]`` or ``[h, w, 3]`` of any size, or a list of them;
- encoded photos (JPEG, PNG, BMP, GIF bytes), raw or base64 text, alone, in a list or array, or as
  the single column of a pandas DataFrame (how ``mlflow models serve`` hands over a JSON column);

and resizes and scales them exactly as in training (rps.images). It runs the model on XNNPACK
(a cached TFLite conversion, rps.lite) when LiteRT is installed and the conversion works, else
in TensorFlow. :class:`RpsModel` is the MLflow pyfunc model logged with every run (this package
travels inside it), so ``mlflow.pyfunc.load_model(...)`` and ``mlflow models serve`` take photos.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

log = logging.getLogger(__name__)
INFO_FILE = "rps_model.json"


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


class Classifier:
    """A run's exported SavedModel, called on images in any form :func:`as_batch` accepts."""

    def __init__(self, saved_model: Path, engine: str = "auto"):
        import tensorflow as tf

        self.path = Path(saved_model)
        info = json.loads((self.path / INFO_FILE).read_text())
        self.class_names, self.image_size = list(info["class_names"]), int(info["image_size"])
        self.engine, self._run = "tf", None
        if engine == "auto":
            self._run = self._lite()
        if self._run is None:
            from rps.model.lite import chunked

            module = tf.saved_model.load(str(self.path))
            self._run = lambda x: chunked(lambda chunk: module(chunk).numpy(), x)

    def _lite(self):
        from rps.model import lite

        try:
            key = lite.conversion_key("classifier", _digest(self.path))
            model = lite.LiteModel(lite.cached_conversion(key, lambda: lite.from_saved_model(self.path)))
        except Exception as err:  # no LiteRT, or a model the converter does not take
            log.warning("Predicting with TensorFlow: XNNPACK unavailable (%s: %s)", type(err).__name__, err)
            return None
        self.engine = lite.engine_name()
        return model

    def __call__(self, images: Any) -> np.ndarray:
        """Class probabilities ``[n, n_classes]`` in :attr:`class_names` order."""
        return self._run(as_batch(images, self.image_size))


def _image(item: Any, size: int) -> np.ndarray:
    """One image (encoded bytes, base64 text, or an array) as float32 [size, size, 3] in [0, 1]."""
    import tensorflow as tf

    from rps.data.images import decode, preprocess

    if isinstance(item, str):
        try:
            item = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError) as err:
            raise ValueError("a text input must be a base64-encoded image file") from err
    if isinstance(item, (bytes, bytearray)):
        image = decode(tf.constant(bytes(item)))
    else:
        image = np.asarray(item)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"an image array must be [height, width, 3], not {list(image.shape)}")
    return preprocess(image, size).numpy()


def as_batch(data: Any, size: int) -> np.ndarray:
    """Any accepted input (see the module docstring) as float32 ``[n, size, size, 3]`` in [0, 1]."""
    if hasattr(data, "columns"):  # a pandas DataFrame: its one column of images
        if len(data.columns) != 1:
            raise ValueError(f"expected one column of images, got columns {list(data.columns)}")
        data = list(data.iloc[:, 0])
    if isinstance(data, (bytes, bytearray, str)):
        data = [data]
    if isinstance(data, np.ndarray) and data.dtype.kind in "fu" and data.ndim in (3, 4):
        batch = data if data.ndim == 4 else data[None]
        if batch.dtype.kind == "f" and batch.shape[1:] == (size, size, 3):
            return batch.astype(np.float32, copy=False)  # already the model's input
        data = list(batch)
    return np.stack([_image(item, size) for item in data]).astype(np.float32)


# RpsModel.predict takes several input forms on purpose (as_batch checks them), so MLflow's advice
# to type-hint it, which it prints when the class is defined (bypassing warning filters), is
# recorded and dropped.
with warnings.catch_warnings(record=True):

    class RpsModel(mlflow.pyfunc.PythonModel):
        """The logged MLflow model: ``predict`` returns class probabilities (see :class:`Classifier`)."""

        def load_context(self, context) -> None:
            self.classifier = Classifier(Path(context.artifacts["saved_model"]))

        def predict(self, context, model_input, params=None) -> np.ndarray:
            return self.classifier(model_input)
