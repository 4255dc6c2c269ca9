"""Classify image files with a trained model, streaming: memory stays flat however many files.

    python -m rps.predict runs:/<run id> photos/ hand.jpg
    python -m rps.predict models:/rps-classifier/1 photos/ --output predictions.csv
    python -m rps.predict <downloaded model>/artifacts/saved_model photos/ --output out.json

MODEL is a run (``runs:/<run id>``: its logged model), an MLflow model URI (``models:/...``,
``runs:/<run id>/<model name>``; the store is ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``,
else ``sqlite:///mlruns/mlflow.db``), a downloaded MLflow model folder, or the SavedModel inside
one (``artifacts/saved_model``); rps.tracking.models verifies it before it is loaded. Class names
and the input size come from the model; it runs on XNNPACK when it can
(rps.inference.classifier). Images of any size and of any format TensorFlow or Pillow decodes are
resized exactly as in training. A file that cannot be decoded, or whose header declares more
pixels than the limit, is reported and skipped.

Two threads decode the next images while the model works on the current batch, with at most
:data:`AHEAD` batches of decodes in flight, and every prediction is written (table, CSV, JSON) as
soon as its batch is done: 30,000 files take the memory 100 do.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Optional, TextIO

from rps.common.errors import ResourceError
from rps.common.files import atomic_write
from rps.data.images import DEFAULT_MAX_PIXELS, OversizeImage, check_pixels
from rps.data.sources import PREDICT_EXTENSIONS

AHEAD = 2  # batches of decodes in flight beyond the batch being assembled


def _saved_model(path: Path):
    from rps.model.export import INFO_FILE
    from rps.inference.classifier import Classifier

    if not (path / INFO_FILE).is_file():
        raise ResourceError(f"{path} is a SavedModel but not one written by rps (no {INFO_FILE} beside it).")
    try:
        return Classifier(path)
    except Exception as err:  # TF raises several types for damaged or foreign SavedModels
        raise ResourceError(f"{path} cannot be loaded as a SavedModel: {str(err).splitlines()[0][:300]}") from err


def load_predictor(folder: Path):
    """The :class:`~rps.inference.classifier.Classifier` of a local, verified model: a SavedModel written by a
    run, or an MLflow model folder logged by rps (its ``artifacts/saved_model``), or a ``.tflite``
    file a run exported. Nothing in the folder is imported or executed as Python: only the
    SavedModel (or the TFLite flatbuffer) is loaded."""
    if folder.is_file() and folder.suffix == ".tflite":  # a TFLite file a run exported (export.formats)
        from rps.inference.lite_classifier import LiteClassifier

        return LiteClassifier(folder)
    if (folder / "saved_model.pb").is_file():
        return _saved_model(folder)
    if (folder / "MLmodel").is_file():
        if not (folder / "artifacts" / "saved_model" / "saved_model.pb").is_file():
            raise ResourceError(f"The MLflow model {folder} was not logged by rps (no artifacts/saved_model inside).")
        return _saved_model(folder / "artifacts" / "saved_model")
    raise ResourceError(f"{folder} is neither a SavedModel (saved_model.pb), an MLflow model (MLmodel) nor a .tflite file.")


def image_files(inputs: list[str]) -> list[Path]:
    """Files named directly, plus image files found (recursively) in the folders named."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PREDICT_EXTENSIONS)
        else:
            out.append(path)
    return out


@lru_cache(maxsize=None)
def _tf_loader(image_size: int):
    """A file path -> model input, in one TensorFlow graph (no per-op Python: ~3x faster than eager)."""
    import tensorflow as tf

    from rps.data.images import decode, preprocess

    return tf.function(lambda path: preprocess(decode(tf.io.read_file(path)), image_size),
                       input_signature=[tf.TensorSpec([], tf.string)])


def load_image(path: Path, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS):
    """The image as the model's input: its header checked against ``max_pixels``
    (:class:`~rps.data.images.OversizeImage`, nothing decoded), then decoded to RGB, scaled to
    [0, 1] and resized as in training."""
    import numpy as np
    import tensorflow as tf

    from rps.data.images import preprocess

    check_pixels(path, max_pixels, str(path))
    try:
        return _tf_loader(image_size)(str(path)).numpy()
    except (tf.errors.OpError, ValueError):  # not a format TF decodes: try Pillow (WebP, TIFF, ...)
        from PIL import Image

        with Image.open(path) as opened:
            return preprocess(np.asarray(opened.convert("RGB")), image_size).numpy()


def _loaded(path: Path, image_size: int, max_pixels: int):
    """(path, image or None, error or None): a failure is data, so one bad file skips only itself."""
    try:
        return path, load_image(path, image_size, max_pixels), None
    except OversizeImage as err:
        return path, None, str(err)
    except Exception as err:  # unreadable, truncated, not an image
        return path, None, f"cannot decode it as an image ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"


def decoded(files: Iterable[Path], image_size: int, max_pixels: int, window: int) -> Iterator[tuple]:
    """:func:`_loaded` of each file, in order, by two threads, with at most ``window`` files
    submitted and not yet taken (``ThreadPoolExecutor.map`` would submit them all at once, and
    decoded images pile up while the model is slower than decoding: ~0.6 MB each)."""
    remaining = iter(files)
    with ThreadPoolExecutor(2) as pool:
        pending = deque(pool.submit(_loaded, p, image_size, max_pixels) for p in islice(remaining, window))
        while pending:
            done = pending.popleft().result()
            for path in islice(remaining, 1):
                pending.append(pool.submit(_loaded, path, image_size, max_pixels))
            yield done


def predictions(predictor, files: list[Path], batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS,
                progress: bool = False) -> Iterator[tuple[Path, Optional[dict], Optional[str]]]:
    """(file, row, None) for each classified file and (file, None, error) for each skipped one,
    in the files' order, batch by batch. A row: file, label, confidence, ``p_<class>`` for each class."""
    import numpy as np
    import tensorflow as tf

    bar = tf.keras.utils.Progbar(len(files), unit_name="image") if progress and len(files) > batch_size else None
    stream = decoded(files, predictor.image_size, max_pixels, AHEAD * batch_size)
    done = 0
    while batch := list(islice(stream, batch_size)):
        good = [image for _, image, error in batch if error is None]
        probs = iter(np.asarray(predictor(np.stack(good).astype(np.float32))) if good else [])
        for path, _, error in batch:
            yield (path, None, error) if error is not None else (path, _row(predictor.class_names, path, next(probs)), None)
        done += len(batch)
        if bar:
            bar.update(done)


def _row(class_names: list[str], path: Path, p) -> dict:
    best = int(p.argmax())
    return {"file": str(path), "label": class_names[best], "confidence": float(p[best]),
            **{f"p_{name}": float(v) for name, v in zip(class_names, p)}}


def columns(class_names: list[str]) -> list[str]:
    return ["file", "label", "confidence", *(f"p_{name}" for name in class_names)]


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


class TableWriter:
    """Rows as aligned text lines, written as they come: widths are known before the first row
    (the longest file name, the longest class name, four decimals)."""

    def __init__(self, out: TextIO, class_names: list[str], files: list[Path]):
        self.out, self.names = out, columns(class_names)
        longest = {"file": max((len(str(f)) for f in files), default=4), "label": max(map(len, class_names))}
        self.widths = [max(len(name), longest.get(name, 6)) for name in self.names]
        self.rows = 0

    def write(self, row: dict) -> None:
        if not self.rows:
            self._line(self.names)
        self._line([_fmt(row[name]) for name in self.names])
        self.rows += 1

    def _line(self, cells: list[str]) -> None:
        print("  ".join(c.ljust(w) for c, w in zip(cells, self.widths)).rstrip(), file=self.out)

    def close(self) -> None:
        if not self.rows:
            print("(no predictions)", file=self.out)


class CsvWriter:
    def __init__(self, out: TextIO, class_names: list[str]):
        self.writer = csv.DictWriter(out, fieldnames=columns(class_names))
        self.writer.writeheader()

    def write(self, row: dict) -> None:
        self.writer.writerow(row)

    def close(self) -> None:
        pass


class JsonWriter:
    """A JSON array of row objects, one row per line, written as they come."""

    def __init__(self, out: TextIO):
        self.out, self.rows = out, 0
        out.write("[")

    def write(self, row: dict) -> None:
        self.out.write(("\n  " if not self.rows else ",\n  ") + json.dumps(row))
        self.rows += 1

    def close(self) -> None:
        self.out.write("\n]\n" if self.rows else "]\n")


@contextmanager
def output_file(path: Path, class_names: list[str]) -> Iterator:
    """A writer for ``path`` (.json, else CSV), whose file appears complete when the block ends, or not at all."""
    with atomic_write(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        writer = JsonWriter(text) if path.suffix.lower() == ".json" else CsvWriter(text, class_names)
        yield writer
        writer.close()
        text.flush()
        text.detach()


def check_output(path: Optional[Path]) -> None:
    if path and not path.parent.resolve().is_dir():
        raise ResourceError(f"--output {path}: the folder {path.parent} does not exist.")
    if path and os.path.isdir(path):
        raise ResourceError(f"--output {path} is a folder; give a .csv or .json file name.")
