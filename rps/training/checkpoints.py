"""Per-epoch checkpoints of a run in progress, so a run killed at any moment resumes at its next
epoch with the numbers an uninterrupted run would have had.

After every epoch the model being trained (every variable), its optimizer's state, the random
generators of its layers (dropout masks), the per-epoch history and the state of the
early-stopping and plateau callbacks are written to one folder per run
(``<mlruns_dir>/checkpoints/<run id>/``): into a new sub-folder first, then moved into place, so a
crash while writing leaves the previous checkpoint; ``state.json`` holds a SHA-256 of every file,
and a damaged checkpoint is an error naming the file, never a silent restart. The batches of an
epoch depend on the seed and the epoch only (rps.data.pipelines.EpochStream); with augmentation,
the augmentation's random stream restarts at the resumed epoch (same distribution, not the same
draws). ``run.json`` holds the run's config, for ``python -m rps.run resume=<run id>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from rps.common.errors import ResourceError
from rps.common.files import atomic_write

STATE, RUN, CURRENT = "state.json", "run.json", "current"


@dataclass
class Saved:
    """What a checkpoint holds besides the variables."""

    phase: int  # 1: the head on the frozen backbone; 2: fine-tuning
    epoch: int  # epochs finished in all (both phases)
    phase1_epochs: int  # epochs phase 1 trained (known once phase 2 began)
    history: dict[str, list[float]]  # per-epoch metrics of every finished epoch
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)  # early stopping / plateau state
    stopped: bool = False  # early stopping ended the phase at this epoch
    path: Optional[Path] = None  # the checkpoint's folder

    def phase1_history(self) -> dict[str, list[float]]:
        return {k: v[: self.phase1_epochs] for k, v in self.history.items()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def random_generators(model) -> list:
    """The ``tf.random.Generator`` of every layer of ``model`` that draws random numbers, in a
    fixed order (created now if the layer has not drawn yet)."""
    found = []
    for layer in model._flatten_layers(include_self=False):
        generator = getattr(layer, "_random_generator", None)
        if generator is not None and hasattr(generator, "_maybe_init"):
            generator._maybe_init()
            if getattr(generator, "_generator", None) is not None:
                found.append(generator._generator)
    return found


def _trackables(model) -> dict:
    return {"model": model, "optimizer": model.optimizer, "rng": random_generators(model)}


class Checkpoints:
    """The checkpoints of one run, in ``folder``."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    # ------------------------------------------------------------------ the run's config

    def start(self, run: dict[str, Any]) -> None:
        """Record what resuming needs (the run's config), once, before its first epoch."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with atomic_write(self.folder / RUN) as f:
            f.write(json.dumps(run, indent=2, default=str).encode())

    def run(self) -> dict[str, Any]:
        try:
            return json.loads((self.folder / RUN).read_text())
        except (OSError, ValueError) as err:
            raise ResourceError(
                f"No resumable run in {self.folder} ({RUN} is missing or unreadable: {err}). Resume from the "
                "directory (or with the mlruns_dir=...) the run was started with, or start a new run."
            ) from err

    # ------------------------------------------------------------------ per epoch

    def save(self, saved: Saved, model, best_weights: Optional[list[np.ndarray]] = None) -> None:
        """Write a new checkpoint, then make it the current one (the previous one is removed)."""
        import tensorflow as tf

        fresh = self.folder / f".epoch-{saved.epoch}-{os.getpid()}"
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        tf.train.Checkpoint(**_trackables(model)).write(str(fresh / "variables"))
        if best_weights is not None:
            np.savez(fresh / "best_weights.npz", *best_weights)
        files = {p.name: _sha256(p) for p in sorted(fresh.iterdir())}
        state = {k: v for k, v in saved.__dict__.items() if k != "path"} | {"files": files}
        (fresh / STATE).write_text(json.dumps(state))
        target = self.folder / f"epoch-{saved.epoch}"
        shutil.rmtree(target, ignore_errors=True)
        os.replace(fresh, target)
        with atomic_write(self.folder / CURRENT) as f:  # the switch to the new checkpoint is one rename
            f.write(f"{target.name}\n{_sha256(target / STATE)}\n".encode())
        for old in self.folder.glob("epoch-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> Optional[Saved]:
        """The current checkpoint, verified; None when the run has none yet."""
        pointer = self.folder / CURRENT
        if not pointer.is_file():
            return None
        name, _, state_digest = pointer.read_text().strip().partition("\n")
        path = self.folder / name
        try:
            if not (path / STATE).is_file() or _sha256(path / STATE) != state_digest:
                raise ValueError(f"{path / STATE} is missing or changed since it was written")
            state = json.loads((path / STATE).read_text())
            for name, digest in state.pop("files").items():
                if not (path / name).is_file() or _sha256(path / name) != digest:
                    raise ValueError(f"{path / name} is missing or changed since it was written")
            return Saved(**state, path=path)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ResourceError(
                f"The checkpoint in {path} is damaged ({err}), so the run cannot resume from it. Delete "
                f"{self.folder} and start the run again (a new run), or restore that folder from a backup."
            ) from err

    def restore(self, saved: Saved, model) -> Optional[list[np.ndarray]]:
        """Load the checkpoint's variables into ``model`` (compiled, its optimizer built); returns
        early stopping's best weights, if it kept any."""
        import tensorflow as tf

        tf.train.Checkpoint(**_trackables(model)).read(str(saved.path / "variables")).assert_existing_objects_matched()
        best = saved.path / "best_weights.npz"
        if not best.is_file():
            return None
        with np.load(best) as stored:
            return [stored[f"arr_{i}"] for i in range(len(stored.files))]

    def clear(self) -> None:
        """The run finished: its checkpoints are no longer needed."""
        shutil.rmtree(self.folder, ignore_errors=True)
