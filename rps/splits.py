"""Splits: how many examples go to train / validation / test, and which ones (NumPy only).

Sizes and membership live together here, free of TensorFlow, so pre-flight can check that a
split fits the data within a second. Membership is one seeded permutation of example indices
into the *pool* (the dataset's train examples, then its test examples): every epoch sees exactly
the same train / val / test membership (the reference tutorial reshuffled on every iteration and
so leaked val/test images into training).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from rps.config import resolve_size
from rps.errors import ConfigError


@dataclass(frozen=True)
class SplitSizes:
    train: int
    val: int
    test: int


def split_sizes(split: DictConfig, n_train: int, n_test: int) -> SplitSizes:
    """Sizes of the three splits for a dataset of ``n_train`` + ``n_test`` examples.

    Raises :class:`ConfigError` when the requested split does not fit the data.
    """
    if split.kind == "tutorial":
        pool = n_train + n_test
        val, test = resolve_size(split.val_size, pool), resolve_size(split.test_size, pool)
        train = pool - val - test
        where = f"the pooled {pool} examples"
    else:
        if n_test == 0:
            raise ConfigError(
                "split=official needs the dataset's own test set, and this dataset has none "
                "(for an image folder set dataset.test_path). Use split=tutorial instead."
            )
        val, test = resolve_size(split.val_size, n_train), n_test
        train = n_train - val
        where = f"the dataset's {n_train} training examples"
    if train < 1:
        raise ConfigError(
            f"The split does not fit the data: split.val_size={split.val_size} and "
            f"split.test_size={split.test_size} take {val + (test if split.kind == 'tutorial' else 0)} "
            f"of {where}, leaving {train} for training. Use smaller sizes (counts or fractions < 1)."
        )
    return SplitSizes(train=train, val=val, test=test)


def split_indices(n_train: int, n_test: int, kind: str, sizes: SplitSizes, seed: int) -> dict[str, np.ndarray]:
    """Disjoint ``train``/``val``/``test`` indices into the pool (train examples, then test ones)."""
    rng = np.random.default_rng(seed)
    if kind == "tutorial":
        order = rng.permutation(n_train + n_test)
        val_end = sizes.val + sizes.test
        return {"train": order[val_end:], "val": order[: sizes.val], "test": order[sizes.val : val_end]}
    order = rng.permutation(n_train)
    # the test order only matters for which images the sample grid shows
    return {"train": order[sizes.val :], "val": order[: sizes.val], "test": n_train + rng.permutation(n_test)}
