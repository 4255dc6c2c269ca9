"""Examples: a dataset's encoded images and labels, loaded from TFDS or an image folder.

Images stay encoded (JPEG/PNG bytes, or file paths for image folders) until a pipeline
(rps.data.pipelines) decodes them, so the whole rock_paper_scissors dataset is ~45 MB in memory.
Which examples go where: rps.data.splits.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from rps.common.errors import DataError, ResourceError
from rps.data.images import DEFAULT_MAX_PIXELS, OversizeImage, check_pixels, decode
from rps.data.sources import DatasetSource

log = logging.getLogger(__name__)


@dataclass
class Examples:
    """Encoded images (bytes, or file paths when ``from_files``) and integer labels, in order."""

    images: np.ndarray  # dtype object
    labels: np.ndarray  # int64
    from_files: bool = False

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> "Examples":
        return Examples(self.images[index], self.labels[index], self.from_files)

    def digest(self) -> str:
        """SHA-256 of the examples, in order: encoded bytes (a file: its path, size and modification
        time) and labels. Equal for the same data in the same order, whatever run computes it."""
        h = hashlib.sha256()
        for item in self.images:
            if self.from_files:
                stat = os.stat(item)
                item = f"{item}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
            h.update(len(item).to_bytes(8, "little"))
            h.update(item)
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return h.hexdigest()

    def class_counts(self, class_names: list[str]) -> dict[str, int]:
        return {name: int(count) for name, count in zip(class_names, np.bincount(self.labels, minlength=len(class_names)))}


def concat(a: Examples, b: Examples) -> Examples:
    return Examples(np.concatenate([a.images, b.images]), np.concatenate([a.labels, b.labels]), a.from_files)


def _tfds_examples(ds: tf.data.Dataset) -> Examples:
    images, labels = [], []
    for image, label in ds.batch(512).as_numpy_iterator():  # batches: ~10x faster than one by one
        images.extend(image)
        labels.append(label)
    return Examples(np.array(images, dtype=object), np.concatenate(labels).astype(np.int64) if labels else
                    np.zeros(0, np.int64))


def load_tfds(source: DatasetSource) -> tuple[Examples, Examples, list[str], str]:
    """Train and test examples of a TFDS dataset, its class names and its version."""
    import tensorflow_datasets as tfds

    try:
        (train, test), info = tfds.load(
            f"{source.name}:{source.version}" if source.version else source.name,
            split=["train", "test"],
            data_dir=source.data_dir,
            download=not source.prepared,
            as_supervised=True,
            with_info=True,
            shuffle_files=False,
            decoders={"image": tfds.decode.SkipDecoding()},  # decoded later, in the pipeline
        )
    except Exception as err:  # TFDS raises many types; all mean "cannot load it"
        raise ResourceError(
            f"TFDS could not load '{source.name}' from {source.data_dir}: {err}. Set TFDS_DATA_DIR "
            "(or dataset.data_dir) to a folder that holds a prepared copy of the dataset."
        ) from err
    names = list(info.features[info.supervised_keys[1]].names)
    try:
        return _tfds_examples(train), _tfds_examples(test), names, str(info.version)
    except tf.errors.OpError as err:  # truncated or corrupted tfrecord files
        raise DataError(
            f"The prepared TFDS data of '{source.name}' in {source.data_dir} is damaged "
            f"({type(err).__name__}: {err.message.splitlines()[0]}). Prepare it again, or point "
            "TFDS_DATA_DIR (or dataset.data_dir) at an intact copy."
        ) from err


def _file_examples(files: list[tuple[str, int]]) -> Examples:
    paths = np.array([p for p, _ in files], dtype=object)
    return Examples(paths, np.array([y for _, y in files], dtype=np.int64), from_files=True)


def find_corrupt(paths: list[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, str]:
    """The files among ``paths`` that cannot be used, with why: more pixels than ``max_pixels``
    (read from the header: such a file is never decoded), or not decodable by TensorFlow."""
    bad = {}
    for path in paths:
        try:
            check_pixels(path, max_pixels, path)
            decode(tf.io.read_file(path))
        except OversizeImage as err:
            bad[path] = str(err)
        except (OSError, tf.errors.OpError, ValueError):
            bad[path] = f"{path} cannot be decoded"
    return bad


def load_image_folder(source: DatasetSource, skip_corrupt: bool,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Examples, Examples, int]:
    """Train and test examples of an image folder, checked for undecodable or oversize files.

    Returns the examples and the number of such files left out (only with ``skip_corrupt``).
    """
    all_files = source.train_files + source.test_files
    bad = find_corrupt([p for p, _ in all_files], max_pixels)
    if bad and not skip_corrupt:
        listed = "; ".join(bad[p] for p in sorted(bad)[:20]) + (" ..." if len(bad) > 20 else "")
        raise DataError(
            f"{len(bad)} image file(s) cannot be used: {listed}. Remove or fix them, raise dataset.max_pixels "
            "for images that are really that big, or set dataset.skip_corrupt=true to leave them out "
            "(their number is logged)."
        )
    if bad:
        log.warning("Leaving out %d unusable image file(s): %s", len(bad), "; ".join(bad[p] for p in sorted(bad)))
    train = _file_examples([(p, y) for p, y in source.train_files if p not in bad])
    test = _file_examples([(p, y) for p, y in source.test_files if p not in bad])
    return train, test, len(bad)
