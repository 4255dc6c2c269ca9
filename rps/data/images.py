"""How an image becomes the model's input: one definition for training, prediction and serving.

Decoding (JPEG/PNG/BMP/GIF bytes -> uint8 RGB) and preprocessing (scale to [0, 1], bilinear
resize to the backbone's square input) are TensorFlow ops, applied the same way by the tf.data
pipelines (rps.data.pipelines), the predict CLI and the logged MLflow model (rps.inference).
TensorFlow is imported on first use: config checks read :data:`PREPROCESSING` before anything
heavy is imported.

TensorFlow's decoders have no pixel limit: a 48 KB PNG of 20000x20000 pixels decodes to 1.2 GB.
So whatever comes from outside is first measured from its header (:func:`check_pixels`, Pillow
reads only the header) and refused above a limit, before anything decodes it.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Union

from rps.common.errors import DataError

if TYPE_CHECKING:  # imported where decoding happens: the limit's checks need no TensorFlow
    import tensorflow as tf

# Describes decode + preprocess; part of the feature cache key (bump it when they change).
PREPROCESSING = "decode_image(channels=3) -> convert_image_dtype(float32) -> resize(bilinear)"
DEFAULT_MAX_PIXELS = 50_000_000  # 50 megapixels: a 8660x5773 photo; decoded as RGB, 150 MB
_HEADER_LOCK = threading.Lock()  # Pillow's own bomb check is one module-wide setting (see image_dimensions)


class OversizeImage(DataError):
    """An image whose header declares more pixels than the limit allows (it is never decoded)."""


def image_dimensions(source: Union[str, Path, bytes, BinaryIO]) -> tuple[int, int]:
    """(width, height) from the image's header; nothing is decoded.

    Pillow's own decompression-bomb check (``Image.MAX_IMAGE_PIXELS``, 89 Mpx) would refuse the
    biggest images before saying how big they are; it is off while the header is read, so that
    :func:`check_pixels` can name the size against rps's own limit. Raises ``OSError`` (Pillow's
    ``UnidentifiedImageError``) for a file that is not an image Pillow recognises.
    """
    from PIL import Image

    opened = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    with _HEADER_LOCK:
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(opened) as image:
                return image.size
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def check_pixels(source: Union[str, Path, bytes, BinaryIO], max_pixels: int, name: str = "the image") -> None:
    """Raise :class:`OversizeImage` naming ``name`` and its size when its header declares more than
    ``max_pixels`` pixels; an unreadable header raises ``OSError``."""
    width, height = image_dimensions(source)
    if width * height > max_pixels:
        raise OversizeImage(f"{name} is {width}x{height} pixels ({width * height / 1e6:.0f} Mpx), more than the "
                            f"limit of {max_pixels / 1e6:g} Mpx; it was not decoded")


def check_array_pixels(shape: tuple[int, ...], max_pixels: int, name: str = "the image") -> None:
    """The same limit for an image given as an array ``[height, width, 3]``."""
    height, width = int(shape[0]), int(shape[1])
    if width * height > max_pixels:
        raise OversizeImage(f"{name} is {width}x{height} pixels ({width * height / 1e6:.0f} Mpx), more than the "
                            f"limit of {max_pixels / 1e6:g} Mpx")


def decode(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG/PNG/BMP/GIF bytes -> uint8 [H, W, 3] (grey and RGBA images become RGB).

    No pixel limit of its own: check untrusted bytes with :func:`check_pixels` first."""
    import tensorflow as tf

    return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def preprocess(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Image(s), uint8 (0-255) or float (0-1) -> float32 in [0, 1], resized to ``image_size`` squares."""
    import tensorflow as tf

    image = tf.image.convert_image_dtype(image, tf.float32)
    return tf.image.resize(image, (image_size, image_size))
