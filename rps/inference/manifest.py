"""A logged model's SHA-256 manifest: what rps checks before it loads, serves or re-logs a model.

A logged MLflow model is a folder (``MLmodel``, the ``python_model`` file, ``code/``,
``artifacts/saved_model/``...). Loading it as MLflow's pyfunc runs the Python among those files,
and even its SavedModel alone is code-like (TensorFlow ops can read and write files): whoever can
write a model's artifacts could run code on the machine that loads it. So when rps logs a model
it writes :data:`MANIFEST_FILE` into the model's folder (every other file's SHA-256) and records
the manifest's own SHA-256 as the run's tag ``rps.model_manifest_sha256`` (rps.tracking); before
anything in a downloaded model is imported or executed, :func:`verify` checks the folder against
that digest: a changed, added or missing file stops everything, naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from rps.common.errors import IntegrityError

MANIFEST_FILE = "rps_manifest.json"
# Written by MLflow itself beside a model it downloads (the registry name and version, which
# nothing executes), so never part of what was logged.
DOWNLOAD_NOTES = frozenset({"registered_model_meta"})
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (but the manifest) -> its SHA-256, by POSIX relative path.

    Symbolic links are not followed: one is listed as ``symlink:<target>``, which never equals a
    hash, so a link planted in a model is a changed or added file."""
    out = {}
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = Path(root, name)
            rel = path.relative_to(folder).as_posix()
            if rel == MANIFEST_FILE:
                continue
            out[rel] = f"symlink:{os.readlink(path)}" if path.is_symlink() else sha256_file(path)
    return dict(sorted(out.items()))


def manifest_bytes(hashes: dict[str, str]) -> bytes:
    """The manifest as written (sorted keys, fixed layout): the same files give the same bytes."""
    return json.dumps({"format": 1, "files": hashes}, indent=1, sort_keys=True).encode() + b"\n"


def write_manifest(folder: Path) -> str:
    """Write :data:`MANIFEST_FILE` into ``folder``; returns its SHA-256 (the run's tag)."""
    content = manifest_bytes(file_hashes(folder))
    (folder / MANIFEST_FILE).write_bytes(content)
    return hashlib.sha256(content).hexdigest()


def differences(listed: dict[str, str], actual: dict[str, str]) -> list[str]:
    """What differs, file by file: ``changed: <path>``, ``added: <path>``, ``missing: <path>``."""
    changed = [f"changed: {p}" for p in listed if p in actual and actual[p] != listed[p]]
    missing = [f"missing: {p}" for p in listed if p not in actual]
    added = [f"added: {p}" for p in actual if p not in listed and p not in DOWNLOAD_NOTES]
    return changed + added + missing


def check_files(listed: dict[str, str], folder: Path, what: str) -> None:
    """Raise :class:`IntegrityError` naming the files of ``folder`` that differ from ``listed``."""
    found = differences(listed, file_hashes(folder))
    if found:
        shown = "; ".join(found[:10]) + (f"; and {len(found) - 10} more" if len(found) > 10 else "")
        raise IntegrityError(
            f"{what} is not the model that was logged ({shown}). Nothing in it was loaded or run. Someone "
            "or something changed its files after it was logged: use another model, or log this one again."
        )


def verify(folder: Path, expected: Optional[str], what: str) -> None:
    """Check ``folder`` against its manifest, and the manifest against ``expected`` (the digest
    its run recorded; None for a local folder, checked against the manifest it carries)."""
    path = folder / MANIFEST_FILE
    try:
        content = path.read_bytes()
    except OSError:
        raise IntegrityError(f"{what} carries no {MANIFEST_FILE}, so its files cannot be checked against "
                             "what was logged. Nothing in it was loaded or run.") from None
    if expected is not None and hashlib.sha256(content).hexdigest() != expected:
        raise IntegrityError(
            f"{what}: its {MANIFEST_FILE} is not the one its run recorded (changed: {MANIFEST_FILE}). Nothing "
            "in it was loaded or run: someone or something changed the model after it was logged."
        )
    try:
        listed = json.loads(content)["files"]
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"{what}: its {MANIFEST_FILE} is not a manifest rps wrote (changed: {MANIFEST_FILE}). "
                             "Nothing in it was loaded or run.") from None
    check_files(listed, folder, what)
