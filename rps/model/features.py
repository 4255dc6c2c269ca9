"""Feature cache: frozen-backbone features computed once, reused by every run that can.

With a frozen backbone and no augmentation, every epoch of every run would push the same
images through MobileNet-V2 again. Instead, the features of the whole example pool (train +
test, in source order) are computed once and stored under a key that hashes exactly what
determines them: the encoded images and labels, every file of the backbone SavedModel, the
image size, the preprocessing and the engine computing them (XNNPACK or TensorFlow, see
rps.lite). Splits, seeds, heads and optimizers do not enter the key, so sweeps over them all
share one entry.

Entries are written atomically (temporary file + rename) under an exclusive lock, so parallel
jobs neither corrupt an entry nor compute it twice; each read is verified (zip CRCs, shapes and
a SHA-256 of the arrays), and a damaged entry is logged, discarded and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from omegaconf import DictConfig

from rps.common.errors import ResourceError
from rps.common.files import atomic_write, cache_dir, exclusive
from rps.data.images import PREPROCESSING

log = logging.getLogger(__name__)

FORMAT = 2


# --------------------------------------------------------------------------- when the cache applies


def augmented(cfg: DictConfig, phase: int) -> bool:
    """Whether phase 1 (the head on the frozen backbone, a frozen run's only phase) or phase 2
    (fine-tuning) trains on augmented images."""
    return cfg.augment.kind != "none" and (phase == 2 or cfg.augment.head_phase)


def _blocked(cfg: DictConfig) -> Optional[str]:
    """Why cached features would be wrong for phase 1, or None when they are exact."""
    if augmented(cfg, 1):
        return f"training images are augmented (augment={cfg.augment.kind})"
    return None


def cache_plan(cfg: DictConfig) -> tuple[bool, str]:
    """Whether phase 1 trains the head on cached backbone features, and the reason logged.

    The one statement of the rule: phase 1 (a frozen run's only phase) sees the frozen backbone,
    so its features are exactly the cached ones unless the head's images are augmented; phase 2
    (fine-tuning) changes the backbone's top every step: it may train on cached activations of the
    frozen bottom instead (``backbone.fine_tune_cache``, rps.training.finetune_cache).
    """
    blocked = _blocked(cfg)
    if blocked:
        return False, f"off: {blocked}"
    if cfg.feature_cache.enabled is False:
        return False, "off: feature_cache.enabled=false"
    if cfg.backbone.trainable:
        return True, "on for phase 1: the backbone is still frozen and the head's images are not augmented"
    return True, "on: frozen backbone, no augmentation"


def cache_checks(cfg: DictConfig) -> list[tuple[str, bool, str]]:
    """The config combinations the cache cannot serve (checked with the rest of the config)."""
    return [
        ("feature_cache.enabled", not (cfg.feature_cache.enabled and _blocked(cfg)),
         f"null or false: {_blocked(cfg)}, so their features change every epoch (in a fine-tuning "
         "run, augment.head_phase=false keeps phase 1 unaugmented)"),
    ]


# --------------------------------------------------------------------------- the cache itself


def default_dir() -> Path:
    return cache_dir("features")


def _digest_dir(h, folder: Path) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)


def backbone_digest(handle: str, backbone_dir: Optional[Path]) -> str:
    """SHA-256 of every file of the backbone's SavedModel when it is local (a cached hub module,
    a local path), else of its handle (a remote ``gs://``/``s3://`` path)."""
    h = hashlib.sha256()
    if backbone_dir is not None and backbone_dir.is_dir():
        _digest_dir(h, backbone_dir)
    else:
        h.update(handle.encode())
    return h.hexdigest()


def cache_key(examples: str, backbone: str, image_size: int, engine: str) -> str:
    """SHA-256 of the examples (``rps.data.Examples.digest``), the backbone (:func:`backbone_digest`),
    the image size, the preprocessing and the engine that computes the features (``xnnpack`` or
    ``tf``: their features agree to ~1e-5, not bit for bit)."""
    parts = f"rps-features/{FORMAT}/{PREPROCESSING}/{image_size}/{engine}/{backbone}/{examples}"
    return hashlib.sha256(parts.encode()).hexdigest()[:40]


def _checksum(features: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of the arrays' bytes, read in place (no copies: activation entries are ~100 MB)."""
    h = hashlib.sha256()
    for array in (features, labels):
        h.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return h.hexdigest()


@dataclass
class CacheResult:
    features: np.ndarray  # [n_pool, feature_dim] float32 (or [n, *shape] of another dtype: see cached_features)
    status: str  # "hit", "built", or "rebuilt" (a damaged entry was replaced)
    seconds: float  # time spent computing the features, or (on a hit) reading and checking them
    path: Path


def _shape(per_example) -> tuple[int, ...]:
    return (per_example,) if isinstance(per_example, int) else tuple(per_example)


def read_entry(path: Path, labels: np.ndarray, feature_dim, dtype=np.float32) -> np.ndarray:
    """The features stored at ``path`` (``feature_dim``: their length, or their per-example shape);
    raises ``ValueError`` if the entry is damaged."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            features, stored_labels = stored["features"], stored["labels"]
            checksum = str(stored["checksum"])
    except (OSError, KeyError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise ValueError(f"unreadable ({type(err).__name__}: {err})") from err
    expected = (len(labels), *_shape(feature_dim))
    if features.shape != expected or features.dtype != dtype:
        raise ValueError(f"features of shape {features.shape} ({features.dtype}), expected {expected} ({np.dtype(dtype)})")
    if not np.array_equal(stored_labels, labels):
        raise ValueError("labels differ from the dataset's")
    if _checksum(features, stored_labels) != checksum:
        raise ValueError("checksum mismatch")
    return features


def write_entry(path: Path, features: np.ndarray, labels: np.ndarray, meta: dict) -> None:
    """Write atomically: a complete entry appears under ``path`` or nothing does."""
    with atomic_write(path) as f:
        np.savez(f, features=features, labels=labels, checksum=np.array(_checksum(features, labels)),
                 meta=np.array(json.dumps(meta)))


def cached_features(
    key: str,
    labels: np.ndarray,
    feature_dim: int,
    compute,
    cache_dir: Optional[Path] = None,
    meta: Optional[dict] = None,
    dtype=np.float32,
) -> CacheResult:
    """The pool's features from the cache, or from ``compute()`` (then stored).

    ``feature_dim`` is the features' length, or their per-example shape (rps.training.finetune_cache
    stores activation maps this way, as ``dtype=float16``)."""
    cache_dir = Path(cache_dir or default_dir())
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ResourceError(
            f"The feature cache folder {cache_dir} cannot be created ({err.strerror or err}). Set "
            "feature_cache.dir to a writable folder, or feature_cache.enabled=false."
        ) from err
    path = cache_dir / f"{key}.npz"
    labels = np.asarray(labels, dtype=np.int64)
    with ExitStack() as stack:
        try:
            stack.enter_context(exclusive(cache_dir / f"{key}.lock"))
            writable = True
        except OSError as err:  # e.g. a read-only shared cache: read it unlocked, never write to it
            log.warning("Feature cache %s cannot be locked (%s): using it read-only.", cache_dir, err)
            writable = False
        return _hit_or_build(path, labels, feature_dim, compute, meta, writable, dtype)


def _hit_or_build(path: Path, labels: np.ndarray, feature_dim, compute, meta, writable: bool, dtype) -> CacheResult:
    status, start = "built", time.monotonic()
    if path.exists():
        try:
            return CacheResult(read_entry(path, labels, feature_dim, dtype), "hit", time.monotonic() - start, path)
        except ValueError as err:
            log.warning("Feature cache entry %s is damaged (%s): rebuilding it.", path, err)
            status = "rebuilt"
            if writable:
                path.unlink(missing_ok=True)
    start = time.monotonic()
    features = np.asarray(compute(), dtype=dtype)
    seconds = time.monotonic() - start
    if writable:
        try:
            write_entry(path, features, labels, meta or {})
        except OSError as err:  # a full disk loses the cache entry, not the run
            log.warning("Could not store feature cache entry %s (%s); the run goes on without it.", path, err)
            status = f"{status}, not stored"
    return CacheResult(features, status, seconds, path)
