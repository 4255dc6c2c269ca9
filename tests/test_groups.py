"""What grouped validation clusters (split.group_features): the knob's check, the colour and shape
statistics of rps.data.appearance, and carve-outs of whole groups of every class for each grouping."""

import io

import numpy as np
import pytest

from conftest import compose
from rps.common.errors import ConfigError
from rps.config import validate
from rps.data.appearance import (COLOUR_DIMENSIONS, DIMENSIONS, HUE_BINS, LEVEL_BINS, appearance_features,
                                 appearance_statistics)
from rps.data.examples import Examples
from rps.data.splits import grouping_features, groups_from_features

# two skin tones of one hue (about 20 degrees), told apart by saturation and brightness
FAMILIES = {"dark": (110, 65, 40), "pale": (245, 200, 180)}


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def hand(colour: tuple[int, int, int], label: int, rng: np.random.Generator, side: int = 64) -> np.ndarray:
    """A white image with a noisy blob of ``colour`` at a random place: a disc for class 0, a bar for class 1."""
    image = np.full((side, side, 3), 255.0)
    y, x = np.mgrid[:side, :side]
    cy, cx = rng.integers(18, side - 18, size=2)
    blob = (y - cy) ** 2 + (x - cx) ** 2 < 14 ** 2 if label == 0 else (abs(y - cy) < 16) & (abs(x - cx) < 7)
    image[blob] = np.asarray(colour) + rng.normal(0, 6, size=(blob.sum(), 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def hands(per_family: int = 12, seed: int = 0) -> tuple[Examples, np.ndarray]:
    """Examples of 2 classes x 2 colour families, and each image's family."""
    rng = np.random.default_rng(seed)
    images, labels, families = [], [], []
    for label in (0, 1):
        for family, colour in FAMILIES.items():
            for _ in range(per_family):
                images.append(png(hand(colour, label, rng)))
                labels.append(label)
                families.append(family)
    return Examples(np.array(images, dtype=object), np.array(labels, dtype=np.int64)), np.array(families)


def test_group_features_is_checked_and_logged_only_when_clustering():
    from rps.tracking.params import run_params

    assert compose().split.group_features == "backbone", "the default: today's clusters, unchanged"
    for kind in ("backbone", "colour", "mix"):
        validate(compose("split=official", "split.group_by=clusters", f"split.group_features={kind}"))
    with pytest.raises(ConfigError, match=r"split.group_features='hands' \(allowed: one of backbone, colour, mix\)"):
        validate(compose("split=official", "split.group_by=clusters", "split.group_features=hands"))
    params = {"split.group_by": "clusters", "split.groups": 5, "split.group_features": "colour"}
    assert run_params(params)["split.group_features"] == "colour"
    assert "split.group_features" not in run_params(params | {"split.group_by": "none"})


def test_appearance_statistics_are_deterministic_and_describe_the_coloured_pixels(tmp_path):
    examples, _ = hands(per_family=3)
    stats = appearance_statistics(examples, batch_size=4)
    assert stats.shape == (12, DIMENSIONS) and np.isfinite(stats).all()
    assert np.array_equal(stats, appearance_statistics(examples, batch_size=5)), "the same numbers, batch or not"
    paths = []
    for i, encoded in enumerate(examples.images):
        paths.append(str(tmp_path / f"{i}.png"))
        (tmp_path / f"{i}.png").write_bytes(encoded)
    files = Examples(np.array(paths, dtype=object), examples.labels, from_files=True)
    assert np.array_equal(stats, appearance_statistics(files)), "files give what their bytes give"

    white, red = np.full((50, 50, 3), 255, np.uint8), np.zeros((50, 50, 3), np.uint8)
    red[..., 0] = 255
    plain = appearance_statistics(Examples(np.array([png(white), png(red)], dtype=object), np.zeros(2, np.int64)))
    mean_rgb, fraction = HUE_BINS + 2 * LEVEL_BINS, COLOUR_DIMENSIONS - 1
    assert plain[0, :HUE_BINS].sum() == 0 and plain[0, fraction] == 0, "a white image has no coloured pixel"
    assert plain[1, 0] == pytest.approx(1) and plain[1, fraction] == pytest.approx(1)
    assert plain[1, mean_rgb:mean_rgb + 3] == pytest.approx([1, 0, 0], abs=1e-6)
    assert appearance_statistics(Examples(np.array([], dtype=object), np.zeros(0, np.int64))).shape == (0, DIMENSIONS)


def test_colour_grouping_separates_two_skin_tones_within_each_class():
    examples, families = hands()
    colour = appearance_features(examples)
    groups = groups_from_features(grouping_features("colour", None, colour, examples.labels), examples.labels, 2)
    for label in (0, 1):
        mine = examples.labels == label
        assert len(set(groups[mine])) == 2
        for family in FAMILIES:
            assert len(set(groups[mine & (families == family)])) == 1, "one skin tone, one group"
    flat = np.ones((len(examples), 8))  # backbone features that tell no image apart: mix groups by colour
    assert list(groups_from_features(grouping_features("mix", flat, colour, examples.labels), examples.labels, 2)) == list(groups)


@pytest.mark.parametrize("kind", ["backbone", "colour", "mix"])
def test_every_carve_out_holds_whole_groups_of_every_class(kind):
    from rps.training.report import Reporter
    from rps.training.validation import make_split

    train_ex, _ = hands(per_family=12)
    test_ex, _ = hands(per_family=2, seed=1)
    rng = np.random.default_rng(0)
    pool_features = rng.normal(size=(len(train_ex) + len(test_ex), 16))
    labels, runs = train_ex.labels, []
    for seed in range(3):
        cfg = compose("split=official", "split.group_by=clusters", f"split.group_features={kind}", "split.groups=3",
                      "split.val_size=0.3", f"seed={seed}")
        index, _, groups = make_split(cfg, train_ex, test_ex, pool_features if kind != "colour" else None, Reporter())
        runs.append((index["val"], groups))
        assert not set(groups[index["val"]]) & set(groups[index["train"]]), "no group on both sides"
        assert set(labels[index["val"]]) == {0, 1}, "every class held out"
        assert len(index["val"]) + len(index["train"]) == len(train_ex)
    assert all(np.array_equal(groups, runs[0][1]) for _, groups in runs), "the same groups for every seed"
    held = [set(val) for val, _ in runs]  # 3 groups per class: seeds 0-2 are one cycle
    assert not (held[0] & held[1] or held[0] & held[2] or held[1] & held[2]), "seeds 0-2 hold out disjoint groups"
    assert set().union(*held) == set(range(len(train_ex))), "and together cover the training set"


def test_mix_weighs_backbone_and_colour_alike_within_each_class():
    """Backbone features are non-negative, uncentred and spread mostly between the classes: with
    L2-normalized rows, or one scale over all classes, colour outweighed them within a class and mix
    grouped as colour alone did (found in review, 2026-12-03)."""
    rng = np.random.default_rng(0)
    n = 40
    labels = np.repeat([0, 1], n // 2)
    halves = np.arange(n) % (n // 2) < n // 4  # two kinds of image in each class, in the backbone's eyes only
    backbone = 10 + 0.1 * rng.random((n, 16))
    backbone[labels == 1, 8:] += 50.0  # the classes far apart: the backbone's spread is mostly between them
    backbone[halves, :4] += 3.0
    colour = rng.normal(size=(n, 32))  # standardized colour statistics that tell nothing apart
    mixed = grouping_features("mix", backbone, colour, labels)
    for label in (0, 1):
        mine = mixed[labels == label]
        assert np.mean(np.sum(mine[:, :16] ** 2, axis=1)) == pytest.approx(np.mean(np.sum(mine[:, 16:] ** 2, axis=1)))
    groups = groups_from_features(mixed, labels, 2)
    for label in (0, 1):
        mine = labels == label
        assert len(set(groups[mine & halves])) == 1 and len(set(groups[mine & ~halves])) == 1
        assert set(groups[mine & halves]) != set(groups[mine & ~halves])


def test_colour_and_thumbnail_blocks_carry_the_same_weight_whatever_columns_are_constant():
    examples, _ = hands()
    stats = appearance_statistics(examples)
    assert (stats.std(axis=0)[:COLOUR_DIMENSIONS] == 0).any(), "the case: some colour columns never vary"
    features = appearance_features(examples)
    colour, thumbnail = features[:, :COLOUR_DIMENSIONS].var(axis=0).sum(), features[:, COLOUR_DIMENSIONS:].var(axis=0).sum()
    assert colour == pytest.approx(1) and thumbnail == pytest.approx(1)


@pytest.mark.parametrize("kind, backbone_features", [("colour", False), ("mix", True)])
def test_only_groupings_that_use_backbone_features_compute_them_when_the_cache_is_off(
        tiny_tfds, tiny_backbone, tmp_path, kind, backbone_features):
    from conftest import prepared_run
    from rps.training.pipeline import train_and_evaluate
    from rps.training.report import Reporter

    cfg = compose(f"dataset.data_dir={tiny_tfds}", f"backbone.handle={tiny_backbone}", "backbone.image_size=32",
                  "split=official", "split.group_by=clusters", f"split.group_features={kind}", "split.groups=2",
                  "epochs=1", "batch_size=16", "feature_cache.enabled=false", f"feature_cache.dir={tmp_path}")
    report = Reporter()
    train_and_evaluate(prepared_run(cfg), report)
    assert report.recorded["params"]["data.n_groups"] == 6  # 2 per class
    assert ("feature_cache_key" in report.recorded["tags"]) == backbone_features
