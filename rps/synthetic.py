"""Tiny generated stand-ins for the real dataset and backbone (tests and benchmarks).

- :func:`prepare_tiny_tfds` writes a *prepared* TFDS ``rock_paper_scissors/3.0.0`` directory
  with TFDS's own builder machinery, so plain ``tfds.load("rock_paper_scissors", data_dir=...)``
  reads it offline exactly as it reads the real dataset.
- :func:`save_tiny_backbone` writes a TF2 reusable SavedModel with TF Hub's feature-vector
  interface (``__call__(x, training)``, ``variables``, ``trainable_variables``,
  ``regularization_losses``); put it in a TF Hub cache with :func:`install_in_hub_cache`.
- :func:`save_mobilenet_backbone` writes a small Keras MobileNetV2 (random weights) in the layout
  of the offline MobileNet-V2 mirror: the network rps.model.split takes apart, in miniature.
- :func:`tiny_mirrors` does both in one folder and points ``TFDS_DATA_DIR``/``TFHUB_CACHE_DIR`` at
  them (benchmarks' smoke runs); :func:`mirrors_in_env` says whether real mirrors are set instead.
- :func:`write_image_folder` writes a class-per-folder dataset of PNG/JPEG files.
- :func:`bomb_png` is a decompression bomb: a small valid PNG that decodes to gigabytes.

Classes differ by their dominant colour, so a head on the tiny backbone learns them in a
few epochs: tests can check that training works, not only that it runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASS_NAMES = ["rock", "paper", "scissors"]


def tiny_image(label: int, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A noisy uint8 RGB image whose dominant channel is ``label``'s."""
    image = rng.uniform(0, 90, size=(size, size, 3))
    image[..., label % 3] += rng.uniform(110, 165)
    # a class-specific stripe, so images of one class are not all alike but share a pattern
    image[(label * size) // 4 : (label * size) // 4 + size // 8, :, :] += 40
    return np.clip(image, 0, 255).astype(np.uint8)


def prepare_tiny_tfds(
    data_dir: str | Path, n_train: int = 60, n_test: int = 24, seed: int = 0, test_label_shift: int = 0
) -> Path:
    """A prepared ``rock_paper_scissors/3.0.0`` under ``data_dir``; returns its version folder.

    ``test_label_shift`` relabels the test split's images (class ``c`` labelled ``c + shift``),
    leaving the images and the train split as they are.
    """
    import tensorflow_datasets as tfds

    class TinyRockPaperScissors(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "rock_paper_scissors"
        VERSION = tfds.core.Version("3.0.0")

        def _info(self):
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict(
                    {"image": tfds.features.Image(shape=(None, None, 3)),
                     "label": tfds.features.ClassLabel(names=CLASS_NAMES)}
                ),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(n_train, seed, 0),
                    "test": self._generate_examples(n_test, seed + 1, test_label_shift)}

        def _generate_examples(self, n, split_seed, shift):
            rng = np.random.default_rng(split_seed)
            for i in range(n):
                label = i % 3
                yield f"{split_seed}-{i}", {"image": tiny_image(label, rng), "label": (label + shift) % 3}

    builder = TinyRockPaperScissors(data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return Path(data_dir) / "rock_paper_scissors" / "3.0.0"


def save_tiny_backbone(
    path: str | Path, feature_dim: int = 16, seed: int = 0, input_size: int | None = None, tflite_ops: bool = True
) -> Path:
    """A small reusable SavedModel: resize to 8x8, flatten, dense + relu -> ``feature_dim``.

    It takes images of any size, or only ``input_size`` squares when that is given.
    ``tflite_ops=False`` adds an op TFLite lacks (``bessel_i0e``, multiplied by 0): the same
    features, but a backbone the TFLite converter refuses.
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    weights = tf.Variable(rng.normal(0, 0.5, size=(8 * 8 * 3, feature_dim)).astype(np.float32), name="w")
    bias = tf.Variable(np.zeros(feature_dim, np.float32), name="b")

    @tf.function
    def call(images, training=False):
        del training  # no dropout or batch norm inside
        small = tf.image.resize(images, (8, 8))
        flat = tf.reshape(small, (-1, 8 * 8 * 3))
        if not tflite_ops:
            flat += 0.0 * tf.math.bessel_i0e(flat)
        return tf.nn.relu(tf.matmul(flat - 0.3, weights) + bias)

    spec = tf.TensorSpec([None, input_size, input_size, 3], tf.float32)
    for training in (False, True):
        call.get_concrete_function(spec, training)
    module = tf.train.Checkpoint()
    module.__call__ = call
    module.variables = [weights, bias]
    module.trainable_variables = [weights, bias]
    module.regularization_losses = []
    tf.saved_model.save(module, str(path))
    return Path(path)


def save_mobilenet_backbone(path: str | Path, alpha: float = 0.35, image_size: int = 96, seed: int = 0) -> Path:
    """A reusable SavedModel of ``tf.keras.applications.MobileNetV2(alpha, include_top=False,
    pooling="avg")`` with random weights, saved as the offline mirror was: the hub feature-vector
    interface on images in [0, 1] (scaled to MobileNetV2's [-1, 1] inside), ``__call__(inputs,
    training)``, ``variables`` and ``trainable_variables`` in Keras' order, and a serving signature
    (``images`` -> ``feature_vector``). BatchNorm statistics are random too, so none is an identity.
    """
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    net = tf.keras.applications.MobileNetV2(input_shape=(image_size, image_size, 3), alpha=alpha,
                                            include_top=False, pooling="avg", weights=None)
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            for weight, low, high in zip(layer.weights, (0.5, -0.2, -0.2, 0.5), (1.5, 0.2, 0.2, 1.5)):
                weight.assign(rng.uniform(low, high, weight.shape).astype(np.float32))

    @tf.function
    def call(inputs, training=False):
        return net(inputs * 2.0 - 1.0, training=training)

    spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32)
    for training in (False, True):
        call.get_concrete_function(spec, training)
    module = tf.train.Checkpoint()  # not holding `net`: saving a Keras model traces every layer (slow)
    module.__call__ = call
    module.variables = list(net.variables)
    module.trainable_variables = list(net.trainable_variables)
    module.regularization_losses = []
    serve = tf.function(lambda images: {"feature_vector": call(images, False)},
                        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")])
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})
    return Path(path)


def install_in_hub_cache(saved_model: str | Path, cache_dir: str | Path, handle: str) -> Path:
    """Copy ``saved_model`` to where TF Hub looks for ``handle``: <cache>/<sha1(handle)>/."""
    import shutil

    from rps.model.hub import hub_cache_path

    target = hub_cache_path(handle, Path(cache_dir))
    shutil.copytree(saved_model, target)
    return target


def mirrors_in_env() -> bool:
    """Whether both offline knobs (``TFDS_DATA_DIR`` and ``TFHUB_CACHE_DIR``) are set."""
    import os

    return bool(os.environ.get("TFDS_DATA_DIR") and os.environ.get("TFHUB_CACHE_DIR"))


def tiny_mirrors(root: str | Path, backbone: str = "tiny", n_train: int = 240, n_test: int = 60) -> list[str]:
    """Tiny data and a backbone under the default handle in ``root``, with ``TFDS_DATA_DIR`` and
    ``TFHUB_CACHE_DIR`` set to them; returns the overrides that fit them.

    ``backbone="tiny"``: :func:`save_tiny_backbone` (frozen-path smoke runs; the overrides size the
    split for ``n_train``). ``"mobilenet"``: :func:`save_mobilenet_backbone` at 96 px (fine-tuning;
    the overrides set the image size and a batch that fits the data).
    """
    import os

    from rps.config import DEFAULT_HANDLE

    root = Path(root)
    prepare_tiny_tfds(root / "tfds", n_train=n_train, n_test=n_test)
    if backbone == "tiny":
        saved, overrides = save_tiny_backbone(root / "backbone"), ["split.val_size=60", "split.test_size=40"]
    elif backbone == "mobilenet":
        saved, overrides = save_mobilenet_backbone(root / "mobilenet", image_size=96), ["backbone.image_size=96", "batch_size=16"]
    else:
        raise ValueError(f"backbone must be 'tiny' or 'mobilenet', not {backbone!r}")
    install_in_hub_cache(saved, root / "tfhub", DEFAULT_HANDLE)
    os.environ["TFDS_DATA_DIR"], os.environ["TFHUB_CACHE_DIR"] = str(root / "tfds"), str(root / "tfhub")
    return overrides


def write_image_folder(root: str | Path, per_class: int = 12, seed: int = 0, fmt: str = "png",
                       subjects: int = 0) -> Path:
    """``root/<class>/<i>.<fmt>`` images for each of :data:`CLASS_NAMES`; with ``subjects``, files are
    named ``subject<s>_<i>.<fmt>`` (image i shows subject i % subjects), as datasets of people are."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    for label, name in enumerate(CLASS_NAMES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            stem = f"subject{i % subjects}_{i:03d}" if subjects else f"{i:03d}"
            Image.fromarray(tiny_image(label, rng)).save(root / name / f"{stem}.{fmt}")
    return root


def bomb_png(side: int = 20000) -> bytes:
    """A valid black 1-bit PNG of ``side`` x ``side`` pixels: 48 KB for 20000x20000 (deflate packs
    the zero rows ~1000:1), which an RGB decoder turns into ``3 * side**2`` bytes (1.2 GB)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (side + 7) // 8)  # filter byte 0, then the row's bits, all black
    packer = zlib.compressobj(9)
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit per pixel, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
