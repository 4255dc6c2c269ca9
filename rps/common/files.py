"""Safe files for parallel jobs on one machine: exclusive locks, atomic writes, rps' cache folder."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block (POSIX ``flock``)."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def atomic_write(path: Path) -> Iterator:
    """A binary file handle whose content appears under ``path`` complete, or not at all."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cache_dir(kind: str) -> Path:
    """``$XDG_CACHE_HOME/rps/<kind>``, else ``~/.cache/rps/<kind>`` (not created)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rps" / kind


def private_files() -> None:
    """Everything this process (and its children) creates from now on is its user's alone:
    folders 0700, files 0600 (a umask of 0o077). rps' commands call it first, so run folders,
    Hydra's records, the local store, kept runs and caches are never readable by other accounts,
    whatever they hold."""
    os.umask(0o077)


def restrict_to_umask(folder: Path) -> None:
    """Take this process's umask away from the modes of everything under ``folder``: files copied
    in from elsewhere (say a package's source files, 0644) keep their source's mode otherwise."""
    mask = os.umask(0)
    os.umask(mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode & 0o7777 & ~mask)
