"""Splits: how many examples go to train / validation / test, and which ones (NumPy only).

Sizes and membership live together here, free of TensorFlow, so pre-flight can check that a
split fits the data within a second. Membership is one seeded permutation of example indices
into the *pool* (the dataset's train examples, then its test examples): every epoch sees exactly
the same train / val / test membership (the reference tutorial reshuffled on every iteration and
so leaked val/test images into training). Grouped validation holds out whole groups of similar
images (clusters of backbone features or of colour and shape statistics, or subjects named in
file names) instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np
from omegaconf import DictConfig

from rps.common.sizes import resolve_size
from rps.common.errors import ConfigError


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
    return {"train": order[sizes.val :], "val": order[: sizes.val], "test": official_test(n_train, n_test, seed)}


def official_test(n_train: int, n_test: int, seed: int) -> np.ndarray:
    """The official test split's indices into the pool, in the seed's order (it only decides which
    images the sample grid shows), whatever the carve-out: grouped, folded and refitted runs of one
    seed list the same test images in the same order, so their ``rps.data.test_digest`` agree."""
    rng = np.random.default_rng(seed)
    rng.permutation(n_train)  # the draws split_indices made before (test digests of earlier runs hold)
    return n_train + rng.permutation(n_test)


# --------------------------------------------------------------------------- grouped validation


def groups_from_pattern(paths: list[str], pattern: str) -> np.ndarray:
    """The subject of each image file: the first group of ``pattern`` in its file name (or the
    whole match). Raises :class:`ConfigError` naming files the pattern does not match."""
    regex = re.compile(pattern)
    groups, unmatched = [], []
    for path in paths:
        found = regex.search(os.path.basename(path))
        if found is None:
            unmatched.append(os.path.basename(path))
            groups.append("")
        else:
            groups.append(found.group(1) if found.groups() else found.group(0))
    if unmatched:
        raise ConfigError(
            f"split.pattern={pattern!r} matches no subject in {len(unmatched)} file name(s), e.g. "
            f"{', '.join(unmatched[:5])}. Give a regex that finds the subject in every file name "
            "(its first group), or use split.group_by=clusters."
        )
    return np.asarray(groups, dtype=object)


def _unit_spread(block: np.ndarray) -> np.ndarray:
    """``block`` centred on its mean row and scaled so that its rows' mean squared distance to it
    is 1 (a block whose rows are all equal stays all zero)."""
    centred = block - block.mean(axis=0)
    spread = np.sqrt(np.mean(np.sum(centred ** 2, axis=1)))
    return centred / spread if spread > 0 else centred


def grouping_features(kind: str, backbone: Optional[np.ndarray], appearance: Optional[np.ndarray],
                      labels: np.ndarray) -> np.ndarray:
    """What :func:`groups_from_features` clusters for ``split.group_features=kind``: the backbone's
    features, the images' colour and shape statistics (rps.data.appearance), or ``mix``: both side
    by side, each centred and scaled to the same spread within each class (:func:`_unit_spread`),
    so each weighs as much in the distances k-means sees, class by class. (Not L2-normalized rows,
    nor one scale over all classes: the backbone's features are non-negative and uncentred, and
    most of their spread lies between the classes, so either way colour outweighed them within a
    class and ``mix`` grouped as ``colour`` did: ARI 0.82-1.00 between the two on the real mirrors.)"""
    if kind == "backbone":
        return backbone
    if kind == "colour":
        return appearance
    mixed = np.zeros((len(labels), backbone.shape[1] + appearance.shape[1]))
    for label in np.unique(labels):
        members = labels == label
        mixed[members] = np.concatenate([_unit_spread(backbone[members].astype(np.float64)),
                                         _unit_spread(appearance[members].astype(np.float64))], axis=1)
    return mixed


def groups_from_features(features: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Groups of similar images of each class: k-means (``k`` groups per class, a fixed seed, so
    every run of every seed sees the same groups) on L2-normalized features (:func:`grouping_features`);
    runs of near-identical frames of one hand fall into one group. Ids are ``<label>-<cluster>``."""
    from sklearn.cluster import KMeans

    normalized = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    groups = np.empty(len(labels), dtype=object)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        clusters = KMeans(n_clusters=min(k, len(members)), n_init=4, random_state=0).fit_predict(normalized[members])
        groups[members] = [f"{label}-{c}" for c in clusters]
    return groups


def _strata(groups: np.ndarray, labels: np.ndarray, stratify: bool) -> list[np.ndarray]:
    """The examples of each stratum: one per class when groups lie within classes, else all."""
    return [np.flatnonzero(labels == c) for c in np.unique(labels)] if stratify else [np.arange(len(groups))]


def group_folds(groups: np.ndarray, labels: np.ndarray, k: int, seed: int, stratify: bool) -> list[np.ndarray]:
    """The examples of each of ``k`` folds, whole groups each: in every stratum (class) groups in a
    seeded order, each added to the fold with the fewest examples of that stratum so far."""
    rng = np.random.default_rng(seed)
    folds: list[list] = [[] for _ in range(k)]
    total = np.zeros(k, dtype=int)  # ties between folds go to the one smallest overall
    for stratum in _strata(groups, labels, stratify):
        names, sizes = np.unique(groups[stratum], return_counts=True)
        filled = np.zeros(k, dtype=int)
        for g in rng.permutation(len(names)):
            smallest = int(np.lexsort((total, filled))[0])
            folds[smallest].append(names[g])
            filled[smallest] += sizes[g]
            total[smallest] += sizes[g]
    return [np.flatnonzero(np.isin(groups, fold)) for fold in folds]


def carve_out_cycle(groups: np.ndarray, labels: np.ndarray, n_val: int, stratify: bool) -> int:
    """How many disjoint carve-outs the seeds rotate through: about ``len(groups) / n_val``, at
    most the fewest groups any stratum (class) has, so every carve-out holds whole groups of every
    class. Raises :class:`ConfigError` when a stratum has fewer than 2 groups (nothing to hold out)."""
    fewest = min(len(np.unique(groups[s])) for s in _strata(groups, labels, stratify))
    if fewest < 2:
        raise ConfigError(
            f"Grouped validation needs at least 2 groups {'in every class' if stratify else 'in the data'} "
            f"(one to hold out, one to train on), and {'a class has' if stratify else 'there is'} {fewest}. "
            "Use more groups (split.groups) or subjects, or split.group_by=none.")
    return int(min(fewest, max(2, round(len(groups) / max(n_val, 1)))))


def grouped_indices(groups: np.ndarray, labels: np.ndarray, n_test: int, n_val: int, seed: int,
                    stratify: bool) -> dict[str, np.ndarray]:
    """The official split with whole groups (of the ``len(groups)`` training examples) held out.

    The training examples are cut into K = :func:`carve_out_cycle` group folds (whole groups, every
    class in each), and seed ``s`` holds out fold ``s % K`` of the partition drawn for ``s // K``:
    K consecutive seeds validate on disjoint carve-outs that together cover the training set, so
    averaging over seeds averages over different held-out hands (independently drawn carve-outs
    repeated themselves: seeds 1 and 3 held out the same clusters, 2026-12-02)."""
    k = carve_out_cycle(groups, labels, n_val, stratify)
    val = np.sort(group_folds(groups, labels, k, seed // k, stratify)[seed % k])
    rng = np.random.default_rng(seed)
    return {"train": rng.permutation(np.setdiff1d(np.arange(len(groups)), val)), "val": val,
            "test": official_test(len(groups), n_test, seed)}
