"""How a run is validated: which training examples validation holds out (random ones, or whole
groups of similar images), and with ``split.folds=K`` the K heads whose mean validation accuracy
judges the run.

Why groups: the training images come in runs of near-identical frames of one hand, so a random
validation carve-out shares hands with training and scores ~1.0 whatever the recipe; the test
split shows other hands. Holding out whole groups (clusters of the frozen backbone's features or of
the images' colour and shape, or subjects named in file names) makes validation show unseen hands too.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np
from omegaconf import DictConfig

from rps.data.appearance import appearance_features
from rps.data.examples import Examples
from rps.data.pipelines import feature_datasets
from rps.data.splits import (carve_out_cycle, official_test, group_folds, grouped_indices, grouping_features,
                             groups_from_features, groups_from_pattern, split_indices, split_sizes)
from rps.training.evaluate import evaluate
from rps.training.loop import seed_everything, train_phase
from rps.training.outcome import OBJECTIVE, OBJECTIVE_LOSS
from rps.training.report import Reporter

log = logging.getLogger(__name__)


def clusters_backbone_features(split: DictConfig) -> bool:
    """Whether the split's groups are clusters of the frozen backbone's features (alone or mixed)."""
    return split.group_by == "clusters" and split.group_features != "colour"


def _groups(split: DictConfig, train_ex: Examples, pool_features: Optional[np.ndarray]) -> np.ndarray:
    if split.group_by == "clusters":
        backbone = pool_features[: len(train_ex)] if clusters_backbone_features(split) else None
        appearance = None if split.group_features == "backbone" else appearance_features(train_ex)
        return groups_from_features(grouping_features(split.group_features, backbone, appearance, train_ex.labels),
                                    train_ex.labels, split.groups)
    if split.group_by == "pattern":
        return groups_from_pattern(list(train_ex.images), split.pattern)
    return np.arange(len(train_ex))  # folds without grouping: every example is its own group


def make_split(cfg: DictConfig, train_ex: Examples, test_ex: Examples,
               pool_features: Optional[np.ndarray], report: Reporter
               ) -> tuple[dict, Optional[list], Optional[np.ndarray]]:
    """Train/val/test indices into the pool (train examples, then test ones), the K folds of
    the training examples when ``split.folds`` > 1 (the run's own validation is fold 0), and the
    group of each training example when validation holds out groups (else None)."""
    sp, n_train, n_test = cfg.split, len(train_ex), len(test_ex)
    sizes = split_sizes(sp, n_train, n_test)  # exact, also after skipping files
    if sp.group_by == "none" and sp.folds == 1:
        index = split_indices(n_train, n_test, sp.kind, sizes, cfg.seed)
        return (refitted(index, cfg.seed) if sp.refit else index), None, None
    groups = _groups(sp, train_ex, pool_features)
    stratify = sp.group_by != "pattern"  # clusters lie within a class; a subject shows every class
    folds = None
    if sp.folds > 1:
        folds = group_folds(groups, train_ex.labels, sp.folds, cfg.seed, stratify)
        rng = np.random.default_rng(cfg.seed)
        rest = np.setdiff1d(np.arange(n_train), folds[0])
        index = {"train": rng.permutation(rest), "val": folds[0], "test": official_test(n_train, n_test, cfg.seed)}
    else:
        index = grouped_indices(groups, train_ex.labels, n_test, sizes.val, cfg.seed, stratify)
        k = carve_out_cycle(groups, train_ex.labels, sizes.val, stratify)
        first = k * (cfg.seed // k)
        report.params({"data.carve_out": f"{cfg.seed % k + 1} of {k}: seeds {first}-{first + k - 1} hold out "
                                         "disjoint groups covering the training set"})
    if sp.group_by == "none":
        return index, folds, None
    _report_groups(groups, index, train_ex.labels, report)
    return index, folds, groups


def refitted(index: dict, seed: int) -> dict:
    """The split of a refit: validation's examples join training (in a seeded order), test unchanged."""
    train = np.random.default_rng(seed).permutation(np.concatenate([index["train"], index["val"]]))
    return {"train": train, "val": index["val"][:0], "test": index["test"]}


def _report_groups(groups: np.ndarray, index: dict, labels: np.ndarray, report: Reporter) -> None:
    """How many groups, their sizes, and which group (and split) each training image fell in."""
    names, sizes = np.unique(groups, return_counts=True)
    held_out = np.unique(groups[index["val"]])
    report.params({"data.n_groups": len(names), "data.n_val_groups": len(held_out),
                   "data.val_groups": ",".join(map(str, held_out))[:500],
                   "data.group_sizes": f"min {sizes.min()}, median {int(np.median(sizes))}, max {sizes.max()}"})
    split = np.where(np.isin(np.arange(len(groups)), index["val"]), "val", "train")
    rows = ["train_index,group,split,label"] + [f"{i},{g},{s},{y}" for i, (g, s, y) in enumerate(zip(groups, split, labels))]
    report.text("\n".join(rows) + "\n", "data/groups.csv")


def train_on_features(cfg: DictConfig, head, features: np.ndarray, labels: np.ndarray, index: dict[str, np.ndarray],
                      sink=lambda metrics, epoch: None, stop=lambda: None, quiet: bool = False, checkpoints=None):
    """Train ``head`` on the cached features of ``index["train"]``, validated on ``index["val"]``
    (the run's phase 1 on features, and every fold's head): its feature datasets and history."""
    n_classes = head.output_shape[-1]
    datasets = feature_datasets(features, labels, index, cfg.batch_size, n_classes, cfg.seed)
    history = train_phase(head, cfg.optimizer, cfg, datasets, len(index["train"]), cfg.epochs, sink, stop=stop,
                          quiet=quiet, checkpoints=checkpoints)
    return datasets, history


def cross_validate(seed: int, folds: list, n_classes: int, first: dict[str, float],
                   fit_fold: Callable[[dict], tuple[np.ndarray, np.ndarray]], report: Reporter) -> dict[str, float]:
    """Models for folds 1..K-1 (fold 0 is the run's own validation, whose ``first`` metrics are
    given): ``fit_fold({"train": ..., "val": ...})`` trains one as the run's model was trained and
    returns its validation predictions (probabilities, labels). Returns what the run is judged by:
    the mean over the K folds of validation accuracy and loss."""
    accuracies, losses = [first["val_accuracy"]], [first["val_loss"]]
    everything = np.concatenate(folds)
    for k, held_out in enumerate(folds[1:], start=1):
        seed_everything(seed)
        rest = np.random.default_rng(seed + k).permutation(np.setdiff1d(everything, held_out))
        log.info("Fold %d of %d: training on %d examples, validating on %d", k + 1, len(folds), len(rest), len(held_out))
        metrics, _ = evaluate(*fit_fold({"train": rest, "val": held_out}), [str(c) for c in range(n_classes)],
                              split="val")
        accuracies.append(metrics["val_accuracy"])
        losses.append(metrics["val_loss"])
    report.metrics({f"cv/fold_{k}_val_accuracy": a for k, a in enumerate(accuracies)}
                   | {"cv/val_accuracy_std": float(np.std(accuracies, ddof=1)), "model_val_accuracy": accuracies[0]})
    log.info("%d-fold validation accuracy %.4f +- %.4f", len(folds), np.mean(accuracies), np.std(accuracies, ddof=1))
    return {OBJECTIVE: float(np.mean(accuracies)), OBJECTIVE_LOSS: float(np.mean(losses))}
