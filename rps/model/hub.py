"""Where a backbone comes from, checked in pure Python (no TensorFlow import): a TF Hub URL (cached
under ``$TFHUB_CACHE_DIR/<sha1 of the handle>/``), a remote file system path, or a local SavedModel.

The check runs before an MLflow run is started, so a missing mirror or no network fails within
seconds with a message naming the fix, instead of a traceback from deep inside TF Hub.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from rps.common.errors import ResourceError
from rps.data import sources  # (its can_reach is looked up at call time: tests make it fail)


def hub_cache_dir() -> Path:
    """TF Hub's cache: $TFHUB_CACHE_DIR, else <tmp>/tfhub_modules (TF Hub's own default)."""
    return sources.absolute(os.environ.get("TFHUB_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "tfhub_modules"))


def hub_cache_path(handle: str, cache_dir: Optional[Path] = None) -> Path:
    """Where TF Hub caches ``handle``: <cache>/<sha1 of the handle string>/."""
    return (cache_dir or hub_cache_dir()) / hashlib.sha1(handle.encode("utf8")).hexdigest()


def _is_saved_model(folder: Path) -> bool:
    return (folder / "saved_model.pb").is_file() or (folder / "saved_model.pbtxt").is_file()


def _handle_kind(handle: str) -> str:
    """"hub" (an http(s) URL TF Hub caches), "remote" (gs://, s3://: TensorFlow's file systems)
    or "local" (a directory path)."""
    scheme = urlparse(handle).scheme
    if scheme in ("http", "https"):
        return "hub"
    return "remote" if len(scheme) > 1 else "local"  # one letter: a Windows drive, a local path


def backbone_dir(handle: str) -> Optional[Path]:
    """The local SavedModel directory ``handle`` loads from (None for remote file systems)."""
    kind = _handle_kind(handle)
    return hub_cache_path(handle) if kind == "hub" else sources.absolute(handle) if kind == "local" else None


def check_backbone(handle: str) -> None:
    """Make sure ``hub.KerasLayer(handle)`` can load without a network it does not have."""
    kind = _handle_kind(handle)
    if kind == "hub":
        cached = hub_cache_path(handle)
        if cached.is_dir() and any(cached.iterdir()):
            return
        if not sources.can_reach(handle):
            raise ResourceError(
                f"The backbone {handle} is not in the TF Hub cache (looked for {cached}) and its "
                "server is unreachable (no network). Set TFHUB_CACHE_DIR to a folder holding the "
                f"SavedModel under {cached.name}/ (for example TFHUB_CACHE_DIR=../shared/offline/tfhub), "
                "or set backbone.handle to a local SavedModel directory."
            )
        return
    if kind == "remote":  # left to TF Hub and TensorFlow's file systems
        return
    folder = sources.absolute(handle)
    if not folder.is_dir():
        raise ResourceError(
            f"backbone.handle={handle} is neither a URL nor an existing folder ({folder} does not "
            "exist). Give a TF Hub URL or the path of a SavedModel directory."
        )
    if not _is_saved_model(folder):
        raise ResourceError(
            f"backbone.handle={handle} is a folder but not a SavedModel (no saved_model.pb in "
            f"{folder}). Point it at the directory that contains saved_model.pb and variables/."
        )
