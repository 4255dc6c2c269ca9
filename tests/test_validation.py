"""Grouped validation: whole groups held out, folds that cover every group once, subjects from
file names, and the recipe chosen on it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import compose, prepared_run
from rps.config import validate
from rps.common.errors import ConfigError
from rps.data.splits import carve_out_cycle, group_folds, grouped_indices, groups_from_features, groups_from_pattern


def test_clusters_gather_near_identical_frames_and_validation_takes_whole_groups_of_every_class():
    rng = np.random.default_rng(0)
    hands = rng.normal(size=(8, 32))  # 8 "hands" (4 per class), 30 near-identical frames each
    features = np.repeat(hands, 30, axis=0) + rng.normal(scale=0.01, size=(240, 32))
    labels = np.repeat(np.arange(8) % 2, 30)
    groups = groups_from_features(features, labels, 4)
    assert all(len(set(groups[h * 30:(h + 1) * 30])) == 1 for h in range(8)), "a hand's frames share a group"
    assert len(set(groups)) == 8 and all(g.startswith(f"{labels[i]}-") for i, g in enumerate(groups))
    for seed in range(5):
        index = grouped_indices(groups, labels, n_test=10, n_val=60, seed=seed, stratify=True)
        assert not set(groups[index["train"]]) & set(groups[index["val"]]), "no group on both sides"
        assert sorted(np.concatenate([index["train"], index["val"]])) == list(range(240))
        assert sorted(np.bincount(labels[index["val"]])) == [30, 30], "whole groups of every class"
        assert sorted(index["test"]) == list(range(240, 250))
    val = [tuple(grouped_indices(groups, labels, 10, 60, s, True)["val"]) for s in range(5)]
    assert len(set(val)) > 1, "the seed picks which groups"


def test_consecutive_seeds_hold_out_disjoint_carve_outs_that_cover_the_training_set():
    labels = np.repeat([0, 1, 2], 100)
    groups = np.array([f"{y}-{i % 5}" for i, y in enumerate(labels)], dtype=object)  # 5 groups per class
    k = carve_out_cycle(groups, labels, n_val=30, stratify=True)
    assert k == 5, "about 300/30 = 10 carve-outs wanted, but a class has only 5 groups to hold out"
    for block in (0, 1):
        vals = [grouped_indices(groups, labels, 0, 30, block * k + s, True)["val"] for s in range(k)]
        assert sorted(np.concatenate(vals)) == list(range(300)), "K consecutive seeds cover every example once"
        for val in vals:
            assert sorted(np.bincount(labels[val], minlength=3)) == [20, 20, 20], "one whole group of every class"
    with pytest.raises(ConfigError, match="at least 2 groups"):
        carve_out_cycle(np.array(["0-0"] * 3 + ["1-0", "1-1", "1-1"], dtype=object), np.array([0] * 3 + [1] * 3),
                        n_val=2, stratify=True)


def test_group_accuracy_shows_the_worst_held_out_group_first():
    from rps.training.diagnostics import group_accuracy

    labels = np.array([0, 0, 1, 1, 1, 1])
    groups = np.array(["a", "a", "b", "b", "b", "b"], dtype=object)
    probs = np.eye(2)[[0, 0, 1, 0, 1, 0]]  # group a all right, group b half right
    rows = group_accuracy(probs, labels, groups, ["rock", "paper"])
    assert [(r["group"], r["examples"], r["accuracy"], r["classes"]) for r in rows] == [
        ("b", 4, 0.5, ["paper"]), ("a", 2, 1.0, ["rock"])]


def test_folds_cover_every_group_once_with_about_equal_sizes():
    groups = np.repeat(np.arange(12), np.arange(1, 13))  # 12 groups of 1..12 examples
    labels = np.zeros(len(groups), dtype=int)
    folds = group_folds(groups, labels, 3, seed=4, stratify=False)
    assert sorted(np.concatenate(folds)) == list(range(len(groups))), "every example in exactly one fold"
    for a in range(3):
        for b in range(a + 1, 3):
            assert not set(groups[folds[a]]) & set(groups[folds[b]]), "a group lies in one fold"
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 12


def test_subjects_come_from_file_names():
    paths = ["/d/rock/alice_01.png", "/d/rock/bob_07.png", "/d/paper/alice_02.png"]
    assert list(groups_from_pattern(paths, r"^([a-z]+)_")) == ["alice", "bob", "alice"]
    with pytest.raises(ConfigError, match="01.png"):
        groups_from_pattern(paths + ["/d/paper/01.png"], r"^([a-z]+)_")


def test_grouped_validation_is_validated_before_anything_runs():
    validate(compose("split=official", "split.group_by=clusters", "split.groups=20"))
    validate(compose("split=official", "split.folds=5"))
    validate(compose("split=official", "split.folds=3", "backbone.trainable=true", "augment=basic"))  # any recipe
    for overrides, key in ((["split.group_by=clusters"], "split.group_by"),  # tutorial: test is random too
                           (["split=official", "split.group_by=pattern"], "split.pattern"),
                           (["split=official", "split.groups=1"], "split.groups"),
                           (["split.folds=3"], "split.folds")):  # tutorial: folds would change its test split
        with pytest.raises(ConfigError, match=key):
            validate(compose(*overrides))


def test_an_image_folder_holds_out_whole_subjects(tmp_path, tiny_backbone):
    from rps.training.pipeline import train_and_evaluate
    from rps.training.report import Reporter
    from rps.synthetic import write_image_folder

    train_dir = write_image_folder(tmp_path / "train", per_class=12, subjects=4)
    test_dir = write_image_folder(tmp_path / "test", per_class=3, seed=1)
    cfg = compose("dataset=image_folder", f"dataset.path={train_dir}", f"dataset.test_path={test_dir}",
                  f"backbone.handle={tiny_backbone}", "backbone.image_size=32", "split=official",
                  "split.group_by=pattern", "split.pattern='^(subject[0-9]+)_'", "split.val_size=0.2", "epochs=2",
                  "batch_size=8", f"feature_cache.dir={tmp_path / 'cache'}")
    report = Reporter()
    out = train_and_evaluate(prepared_run(cfg), report)
    params = report.recorded["params"]
    assert params["data.n_groups"] == 4 and params["data.n_val_groups"] == 1
    assert params["data.n_val"] == "9" or params["data.n_val"] == 9  # one subject: 3 images of each class
    assert "data/groups.csv" in report.artifacts
    assert params["data.carve_out"].startswith("3 of 4: seeds 40-43 "), "seed 42, 4 subjects: each of 40-43 holds out one"

    from rps.training.diagnostics import GROUPS, report_diagnostics

    report_diagnostics(out, report)  # what every run logs after training (rps.training.outputs)
    rows = json.loads(report.texts[GROUPS])
    assert [r["examples"] for r in rows] == [9] and set(rows[0]["classes"]) == {"rock", "paper", "scissors"}
    assert report.recorded["metrics"]["val_group_accuracy_min"] == rows[0]["accuracy"]


def test_k_fold_judges_a_run_by_its_mean_validation_accuracy(tiny_tfds, tiny_backbone, tmp_path):
    from rps.training.pipeline import train_and_evaluate
    from rps.training.report import Reporter

    cfg = compose(f"dataset.data_dir={tiny_tfds}", f"backbone.handle={tiny_backbone}", "backbone.image_size=32",
                  "split=official", "split.group_by=clusters", "split.groups=2", "split.folds=3", "epochs=3",
                  "batch_size=16", f"feature_cache.dir={tmp_path}")
    report = Reporter()
    out = train_and_evaluate(prepared_run(cfg), report)
    folds = [report.recorded["metrics"][f"cv/fold_{k}_val_accuracy"] for k in range(3)]
    assert out.metrics["selection_val_accuracy"] == pytest.approx(np.mean(folds))
    assert report.recorded["metrics"]["model_val_accuracy"] == folds[0]
    assert report.recorded["params"]["data.n_groups"] == 6  # 2 per class


def test_the_robust_recipe_composes_and_validates():
    robust = compose("+experiment=official_robust", return_hydra_config=True)
    validate(robust)
    assert robust.split.kind == "official" and robust.split.group_by == "clusters"
    seeds = [int(s) for s in str(robust.hydra.sweeper.params.seed).split(",")]
    k = robust.split.groups  # val_size 0.1 of ~2520 wants 10 carve-outs; 5 groups per class allow 5
    assert seeds == list(range(seeds[0], seeds[0] + k)) and seeds[0] % k == 0, "one whole cycle of carve-outs"
