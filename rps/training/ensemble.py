"""Ensembles and test-time augmentation, measured: the members' exported classifiers averaged
(rps.model.export.EnsembleClassifier), with and without the horizontal flip, each variant's test
accuracy beside what it costs at inference (forward passes and measured milliseconds per image).

The test split is the members' own (every member must have been tested on the same images): the
official split's whole test set, or the tutorial split recomputed from the seed and sizes.
Nothing here chooses anything: the members were chosen (or simply trained) before, on validation.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from rps.data.examples import Examples, concat
from rps.data.pipelines import make_dataset
from rps.data.splits import split_indices, split_sizes
from rps.model.export import INFO_FILE, EnsembleClassifier, model_info
from rps.training.evaluate import evaluate

LATENCY_BATCH, LATENCY_CALLS = 32, 5


def test_split(cfg: DictConfig, train_ex: Examples, test_ex: Examples) -> Examples:
    """The test examples of a run with config ``cfg``, in the order the run evaluated them when
    that order is seed-determined without grouping (so its ``rps.data.test_digest`` can be checked)."""
    if cfg.split.kind == "official":
        return test_ex  # the dataset's whole test split (its order does not change any accuracy)
    sizes = split_sizes(cfg.split, len(train_ex), len(test_ex))
    index = split_indices(len(train_ex), len(test_ex), "tutorial", sizes, cfg.seed)
    return concat(train_ex, test_ex).take(index["test"])


def _images(examples: Examples, size: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batches = list(make_dataset(examples, size, 64, n_classes).as_numpy_iterator())
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches]).argmax(axis=1)


def _probs(model, images: np.ndarray) -> np.ndarray:
    return np.concatenate([model.__call__(images[i:i + 64]).numpy() for i in range(0, len(images), 64)])


def _ms_per_image(model, images: np.ndarray) -> float:
    batch = images[:LATENCY_BATCH]
    model.__call__(batch)  # trace and warm up (a module built here is not callable itself, a loaded one is)
    times = []
    for _ in range(LATENCY_CALLS):
        start = time.perf_counter()
        model.__call__(batch)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / len(batch)


@dataclass
class Variant:
    name: str
    members: int
    flip: bool
    test_accuracy: float  # for one member: the mean over the members of each one's accuracy
    forward_passes: int  # member forward passes per image
    ms_per_image: float  # measured on a batch of LATENCY_BATCH test images, median of LATENCY_CALLS calls


def measure(member_dirs: list[str], class_names: list[str], size: int, examples: Examples) -> tuple[list[Variant], dict]:
    """Each variant (one member, one member + flip, all members, all + flip) measured on
    ``examples``; and every member's test probabilities with and without the flip, with the labels."""
    import tensorflow as tf

    images, labels = _images(examples, size, len(class_names))
    loaded = [tf.saved_model.load(str(d)) for d in member_dirs]
    plain, flipped = [], []
    for member in loaded:
        one = EnsembleClassifier([member], class_names, size)
        plain.append(_probs(one, images))
        flipped.append(_probs(one, images[:, :, ::-1]))

    def accuracy(probs: np.ndarray) -> float:
        return float((probs.argmax(axis=1) == labels).mean())

    k = len(member_dirs)
    variants = []
    for name, members, flip, acc in (
            ("one member", 1, False, np.mean([accuracy(p) for p in plain])),
            ("one member + flip", 1, True, np.mean([accuracy((p + f) / 2) for p, f in zip(plain, flipped)])),
            (f"{k} members", k, False, accuracy(np.mean(plain, axis=0))),
            (f"{k} members + flip", k, True, accuracy(np.mean(plain + flipped, axis=0)))):
        model = EnsembleClassifier(loaded[:members], class_names, size, flip)
        variants.append(Variant(name, members, flip, float(acc), members * (2 if flip else 1),
                                _ms_per_image(model, images)))
    return variants, {"plain": plain, "flipped": flipped, "labels": labels, "images": images}


def save(member_dirs: list[str], class_names: list[str], size: int, flip: bool, backbone: str, member_ids: list[str],
         path: Path) -> dict:
    """The ensemble as a SavedModel at ``path`` with its metadata beside it (as every rps model);
    returns the metadata."""
    EnsembleClassifier(member_dirs, class_names, size, flip).save(str(path))
    info = model_info(class_names, size, backbone) | {"members": member_ids, "tta": "flip" if flip else "none"}
    (path / INFO_FILE).write_text(json.dumps(info, indent=2))
    return info


def evaluate_saved(model, predictions: dict, class_names: list[str], flip: bool) -> tuple[dict[str, float], np.ndarray]:
    """The saved ensemble's test metrics, computed from its own outputs; it must equal the mean of
    its members' (raises AssertionError otherwise: the SavedModel would not be what was measured)."""
    probs = _probs(model, predictions["images"])
    expected = np.mean(predictions["plain"] + (predictions["flipped"] if flip else []), axis=0)
    if not np.allclose(probs, expected, atol=1e-5):
        raise AssertionError(f"the saved ensemble differs from the mean of its members by {np.abs(probs - expected).max():.2e}")
    metrics, _ = evaluate(probs, predictions["labels"], class_names)
    return metrics, probs


def table(variants: list[Variant]) -> str:
    """The variants as a markdown table."""
    rows = ["| variant | test accuracy | forward passes per image | ms per image |", "|---|---|---|---|"]
    rows += [f"| {v.name} | {v.test_accuracy:.4f} | {v.forward_passes} | {v.ms_per_image:.2f} |" for v in variants]
    return "\n".join(rows) + "\n"
