"""The trained classifier as users call it: images in any common form in, class probabilities out.

:class:`Classifier` wraps a SavedModel written by a run (``rps_model.json`` beside it names the
classes and the input size). It accepts

- float arrays ``[n, size, size, 3]`` in [0, 1] (the training input, taken as is);
- uint8 arrays ``[n, h, w, 3]`` or ``[h, w, 3]`` of any size, or a list of them;
- encoded photos (JPEG, PNG, BMP, GIF bytes), raw or base64 text, alone, in a list or array, or as
  the single column of a pandas DataFrame (how ``mlflow models serve`` hands over a JSON column);

and resizes and scales them exactly as in training (rps.data.images), 32 at a time. An encoded
image is measured from its header first and refused, never decoded, above the pixel limit
(``$RPS_MAX_PIXELS``, default 50 Mpx); a bad item raises :class:`InputError` naming its place in
the request, which the served model answers as HTTP 400 in one line. It runs the model on XNNPACK
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
import os
import warnings
from pathlib import Path
from typing import Any, Optional

import mlflow.pyfunc
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

from rps.common.errors import DataError

log = logging.getLogger(__name__)
INFO_FILE = "rps_model.json"
MAX_PIXELS_ENV = "RPS_MAX_PIXELS"  # the served model's pixel limit (python -m rps.serve --max-pixels sets it)
CHUNK = 32  # images decoded at once per call


def max_pixels_from_env() -> int:
    """The pixel limit a served model applies: ``$RPS_MAX_PIXELS``, else 50 megapixels."""
    from rps.data.images import DEFAULT_MAX_PIXELS

    value = os.environ.get(MAX_PIXELS_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_MAX_PIXELS


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


class Classifier:
    """A run's exported SavedModel, called on images in any form :func:`as_batch` accepts."""

    def __init__(self, saved_model: Path, engine: str = "auto", max_pixels: Optional[int] = None):
        import tensorflow as tf

        self.path = Path(saved_model)
        self.max_pixels = max_pixels or max_pixels_from_env()
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
        """Class probabilities ``[n, n_classes]`` in :attr:`class_names` order.

        Images are decoded :data:`CHUNK` at a time, so a request of any length holds only that
        many decoded images (~0.6 MB each at 224 px) besides its own bytes."""
        items = _items(images)
        out = [np.zeros((0, len(self.class_names)), np.float32)]
        for start in range(0, len(items), CHUNK):
            batch = as_batch(items[start:start + CHUNK], self.image_size, self.max_pixels, start)
            out.append(np.asarray(self._run(batch), np.float32))
        return np.concatenate(out)


class InputError(ValueError):
    """One input item the model cannot take (not an image, too many pixels, a wrong shape), named
    by its position in the request."""


def _image(item: Any, size: int, max_pixels: int) -> np.ndarray:
    """One image (encoded bytes, base64 text, or an array) as float32 [size, size, 3] in [0, 1].

    Encoded images are measured from their header first and refused above ``max_pixels``
    (never decoded): a small PNG can declare 20000x20000 pixels."""
    import tensorflow as tf

    from rps.data.images import check_array_pixels, check_pixels, decode, preprocess

    if isinstance(item, str):
        try:
            item = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError) as err:
            raise ValueError("a text input must be a base64-encoded image file") from err
    if isinstance(item, (bytes, bytearray)):
        try:
            check_pixels(bytes(item), max_pixels)
            image = decode(tf.constant(bytes(item)))
        except (OSError, tf.errors.OpError) as err:
            raise ValueError("not an image file TensorFlow decodes (JPEG, PNG, BMP or GIF)") from err
    else:
        image = np.asarray(item)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"an image array must be [height, width, 3], not {list(image.shape)}")
        check_array_pixels(image.shape, max_pixels)
    try:
        return preprocess(image, size).numpy()
    except (tf.errors.OpError, TypeError, ValueError) as err:  # e.g. an array of text
        raise ValueError(f"cannot be read as an image array of numbers ({type(err).__name__})") from err


def _items(data: Any) -> Any:
    """The request as a sequence of images, or an array that already is the model's input batch."""
    if hasattr(data, "columns"):  # a pandas DataFrame: its one column of images
        if len(data.columns) != 1:
            raise InputError(f"expected one column of images, got columns {list(data.columns)}")
        data = list(data.iloc[:, 0])
    if isinstance(data, (bytes, bytearray, str)):
        return [data]
    if isinstance(data, np.ndarray) and data.dtype.kind in "fu" and data.ndim in (3, 4):
        return data if data.ndim == 4 else data[None]
    if not isinstance(data, (list, tuple, np.ndarray)):
        raise InputError(f"expected an image or a list of images, not {type(data).__name__}")
    return data


def as_batch(items: Any, size: int, max_pixels: Optional[int] = None, start: int = 0) -> np.ndarray:
    """Images (as :func:`_items` lists them) as float32 ``[n, size, size, 3]`` in [0, 1]; a bad
    item raises :class:`InputError` naming its position (``start``: the items before these)."""
    if isinstance(items, np.ndarray) and items.dtype.kind == "f" and items.shape[1:] == (size, size, 3):
        return items.astype(np.float32, copy=False)  # already the model's input
    images = []
    for index, item in enumerate(items, start):
        try:
            images.append(_image(item, size, max_pixels or max_pixels_from_env()))
        except (ValueError, DataError) as err:
            raise InputError(f"input item {index}: {err}") from None
    return np.stack(images).astype(np.float32)


class RequestError(MlflowException):
    """What a client gets back for a request the model cannot answer: one line, no stack trace.

    MLflow's scoring server (3.17) answers an ``MlflowException`` with its error code's HTTP
    status (INVALID_PARAMETER_VALUE: 400) and a JSON body, but first rewrites the exception's
    ``message`` to ``"Failed to predict data '<the request as a table>'. Error: ..."``: several
    lines of the client's own data. This exception keeps the message it was made with.
    """

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):  # set once, by MlflowException.__init__
            self._message = " ".join(str(value).split())


# RpsModel.predict takes several input forms on purpose (as_batch checks them), so MLflow's advice
# to type-hint it, which it prints when the class is defined (bypassing warning filters), is
# recorded and dropped.
with warnings.catch_warnings(record=True):

    class RpsModel(mlflow.pyfunc.PythonModel):
        """The logged MLflow model: ``predict`` returns class probabilities (see :class:`Classifier`)."""

        def load_context(self, context) -> None:
            self.classifier = Classifier(Path(context.artifacts["saved_model"]))

        def predict(self, context, model_input, params=None) -> np.ndarray:
            try:
                return self.classifier(model_input)
            except InputError as err:
                raise RequestError(str(err), INVALID_PARAMETER_VALUE) from None
            except Exception as err:  # a fault of the model or of rps: logged here, one line to the client
                log.exception("Prediction failed")
                first = str(err).splitlines()[0][:300] if str(err) else ""
                raise RequestError(f"the model failed on this request ({type(err).__name__}: {first})",
                                   INTERNAL_ERROR) from None
