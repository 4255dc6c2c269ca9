"""Pre-flight checks of the dataset, in pure Python (no TensorFlow import): where it is, how
many examples each split has, its class names.

They run before an MLflow run is started, so a missing mirror, a wrong path or no network
fails within seconds with a message naming the fix, instead of a long retry loop (TFDS retries
downloads for minutes offline). The backbone's own checks: rps.model.hub.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from omegaconf import DictConfig

from rps.common.errors import ResourceError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")  # what tf.io.decode_image reads (datasets)
PREDICT_EXTENSIONS = IMAGE_EXTENSIONS + (".webp", ".tif", ".tiff", ".ppm")  # and Pillow (rps.predict)
TFDS_DOWNLOAD_URL = "https://storage.googleapis.com"  # where TFDS fetches rock_paper_scissors


@dataclass
class DatasetSource:
    """What pre-flight learned about the dataset, enough to size the split and load it."""

    kind: str  # "tfds" or "image_folder"
    class_names: list[str]
    n_train: Optional[int]  # None when a TFDS dataset still has to be downloaded
    n_test: Optional[int]
    # tfds
    name: str = ""
    data_dir: Optional[str] = None
    version: Optional[str] = None
    prepared: bool = True
    # image_folder: (path, label index) of every image file, in a fixed order
    train_files: list[tuple[str, int]] = field(default_factory=list)
    test_files: list[tuple[str, int]] = field(default_factory=list)


def can_reach(url: str, timeout: float = 3.0) -> bool:
    """True when a TCP connection to ``url``'s host opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except (OSError, TypeError):
        return False


def absolute(path: str) -> Path:
    return Path(os.path.expanduser(path)).resolve()


# --------------------------------------------------------------------------- TFDS


def tfds_data_dir(configured: Optional[str]) -> Path:
    """The folder TFDS reads: ``dataset.data_dir``, else $TFDS_DATA_DIR, else its default."""
    return absolute(configured or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _prepared_versions(dataset_dir: Path) -> list[str]:
    if not dataset_dir.is_dir():
        return []
    found = [
        d.name
        for d in dataset_dir.iterdir()
        if (d / "dataset_info.json").is_file() and d.name.replace(".", "").isdigit()
    ]
    return sorted(found, key=_version_key)


def _split_counts(info: dict) -> dict[str, int]:
    return {s["name"]: sum(int(n) for n in s.get("shardLengths", [])) for s in info.get("splits", [])}


def locate_tfds(cfg: DictConfig) -> DatasetSource:
    """Find a prepared TFDS dataset, or make sure it can be downloaded."""
    data_dir = tfds_data_dir(cfg.data_dir)
    dataset_dir = data_dir / cfg.name
    versions = _prepared_versions(dataset_dir)
    if cfg.version:
        versions = [v for v in versions if v == cfg.version]
    if not versions:
        wanted = f"{cfg.name}/{cfg.version or '<version>'}/"
        if not can_reach(TFDS_DOWNLOAD_URL):
            raise ResourceError(
                f"The TFDS dataset '{cfg.name}' is not prepared in {data_dir} (no {wanted} with a "
                f"dataset_info.json) and it cannot be downloaded: {TFDS_DOWNLOAD_URL} is unreachable "
                "(no network). Set TFDS_DATA_DIR (or dataset.data_dir=...) to a folder that holds a "
                f"prepared {wanted}, for example TFDS_DATA_DIR=../shared/offline/tfds, or run once "
                "with network access to download it."
            )
        return DatasetSource(
            kind="tfds", class_names=[], n_train=None, n_test=None, name=cfg.name,
            data_dir=str(data_dir), version=cfg.version, prepared=False,
        )
    version = versions[-1]
    version_dir = dataset_dir / version
    try:
        counts = _split_counts(json.loads((version_dir / "dataset_info.json").read_text()))
    except (OSError, ValueError, KeyError) as err:
        raise ResourceError(
            f"{version_dir / 'dataset_info.json'} is unreadable ({err}); the prepared dataset is "
            "damaged. Delete that folder and prepare it again, or point TFDS_DATA_DIR elsewhere."
        ) from err
    labels_file = version_dir / "label.labels.txt"
    class_names = labels_file.read_text().split() if labels_file.is_file() else []
    return DatasetSource(
        kind="tfds", class_names=class_names, n_train=counts.get("train", 0),
        n_test=counts.get("test", 0), name=cfg.name, data_dir=str(data_dir), version=version,
    )


# --------------------------------------------------------------------------- image folders


def _class_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _image_files(folder: Path) -> list[str]:
    return sorted(
        str(p) for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def _scan_folder(root: Path, key: str) -> dict[str, list[str]]:
    if not root.is_dir():
        raise ResourceError(
            f"{key}={root} does not exist or is not a folder. Set {key} to a folder with one "
            "sub-directory of images per class (e.g. hands/rock/*.png, hands/paper/*.png)."
        )
    classes = {d.name: _image_files(d) for d in _class_dirs(root)}
    classes = {name: files for name, files in classes.items() if files}
    if len(classes) < 2:
        raise ResourceError(
            f"{key}={root} has {len(classes)} class folder(s) with images "
            f"({', '.join(classes) or 'none'}); a classifier needs at least 2. Put each class's "
            f"images ({', '.join(IMAGE_EXTENSIONS)}) in its own sub-directory of {root}."
        )
    return classes


def scan_image_folder(cfg: DictConfig) -> DatasetSource:
    """List a class-per-folder dataset (and its optional test folder) without reading images."""
    train = _scan_folder(absolute(cfg.path), "dataset.path")
    class_names = sorted(train)
    test: dict[str, list[str]] = {}
    if cfg.test_path:
        test = _scan_folder(absolute(cfg.test_path), "dataset.test_path")
        if sorted(test) != class_names:
            raise ResourceError(
                f"dataset.test_path has classes {sorted(test)} but dataset.path has {class_names}; "
                "both folders need the same class sub-directories."
            )

    def pairs(classes: dict[str, list[str]]) -> list[tuple[str, int]]:
        return [(f, class_names.index(name)) for name in class_names for f in classes.get(name, [])]

    train_files, test_files = pairs(train), pairs(test)
    return DatasetSource(
        kind="image_folder", class_names=class_names, n_train=len(train_files),
        n_test=len(test_files), name=absolute(cfg.path).name,
        train_files=train_files, test_files=test_files,
    )


def locate_dataset(cfg: DictConfig) -> DatasetSource:
    return locate_tfds(cfg) if cfg.kind == "tfds" else scan_image_folder(cfg)
