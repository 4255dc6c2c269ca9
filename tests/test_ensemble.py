"""Ensembles as a model: the saved ensemble predicts the mean of its members (and of their
mirrored views with the flip), rps.ensemble logs it as a run whose model predicts like any other,
and members tested on different images are refused."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TINY_SPLIT, run_cli, store, sweep_runs
from support.commands import run_module

CLASSES = ["rock", "paper", "scissors"]


@pytest.fixture(scope="module")
def members(tiny_backbone, tmp_path_factory):
    """Two exported classifiers on the tiny backbone with different random heads."""
    import tensorflow as tf
    from omegaconf import OmegaConf

    from rps.model.backbone import load_backbone
    from rps.model.export import ExportedClassifier
    from rps.model.head import build_head

    root, dirs = tmp_path_factory.mktemp("members"), []
    for seed in range(2):
        backbone, dim = load_backbone(str(tiny_backbone), 32)
        tf.random.set_seed(seed)
        head = build_head(dim, 3, OmegaConf.create({"dropout": 0.5, "hidden_units": 0, "l2": 0.0}))
        ExportedClassifier(backbone, head, CLASSES, 32).save(str(root / f"m{seed}"))
        dirs.append(root / f"m{seed}")
    return dirs


@pytest.mark.parametrize("flip", [False, True])
def test_a_saved_ensemble_predicts_the_mean_of_its_members(members, flip, tmp_path):
    import tensorflow as tf

    from rps.model.export import EnsembleClassifier

    images = np.random.default_rng(0).random((6, 32, 32, 3)).astype(np.float32)
    EnsembleClassifier(members, CLASSES, 32, flip).save(str(tmp_path / "ensemble"))
    loaded = tf.saved_model.load(str(tmp_path / "ensemble"))
    views = [images, images[:, :, ::-1]] if flip else [images]
    expected = np.mean([tf.saved_model.load(str(m))(v).numpy() for m in members for v in views], axis=0)
    np.testing.assert_allclose(loaded(images).numpy(), expected, atol=1e-6)
    single = tf.saved_model.load(str(members[0]))(images).numpy()
    assert not np.allclose(expected, single, atol=1e-3), "the members differ: the mean is not one of them"
    assert [c.decode() for c in loaded.class_names.numpy()] == CLASSES and int(loaded.image_size.numpy()) == 32


def test_members_tested_on_different_images_are_refused(tmp_path):
    import mlflow

    from rps.common.errors import ResourceError
    from rps.runner.ensemble import plan

    client = store(tmp_path)
    experiment = client.create_experiment("e")
    parent = client.create_run(experiment).info.run_id
    for digest in ("aaa", "bbb"):  # two tutorial-split seeds: each its own test split
        child = client.create_run(experiment, tags={"mlflow.parentRunId": parent, "rps.model_uri": "models:/m-1",
                                                    "rps.data.test_digest": digest}).info.run_id
        client.log_param(child, "split.kind", "tutorial")
        client.set_terminated(child, "FINISHED")
    with pytest.raises(ResourceError, match="tested on different images"):
        plan(parent, mlflow.get_tracking_uri())
    children = [r.info.run_id for r in client.search_runs([experiment], "tags.`mlflow.parentRunId` != ''")]
    unfinished = client.create_run(experiment, tags={"rps.model_uri": "models:/m-2"}).info.run_id
    with pytest.raises(ResourceError, match=f"{unfinished} did not finish"):
        plan([*children, unfinished], mlflow.get_tracking_uri())
    with pytest.raises(ResourceError, match="tested on different images"):  # named one by one: the same check
        plan(children, mlflow.get_tracking_uri())


@pytest.mark.slow
def test_the_ensemble_of_a_sweep_is_a_logged_model_measured_against_its_members(offline_env, tmp_path):
    result = run_cli("-m", "head.dropout=0.2,0.5", "epochs=2", *TINY_SPLIT, cwd=tmp_path, env=offline_env)
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = sweep_runs(tmp_path)
    done = run_module("rps.ensemble", parent.info.run_id, "--flip", cwd=tmp_path, env=offline_env)
    assert done.returncode == 0, done.stderr[-3000:]
    client = store(tmp_path)
    ensemble = client.search_runs([parent.info.experiment_id], f"tags.`rps.ensemble_of` = '{parent.info.run_id}'")[0]
    assert ensemble.info.status == "FINISHED"
    assert set(ensemble.data.tags["rps.ensemble_members"].split(",")) == {c.info.run_id for c in children}
    metrics = ensemble.data.metrics
    # the members' models, downloaded, checked and run on the recomputed test split, score what each
    # scored in its own run
    assert metrics["ensemble/one_member/test_accuracy"] == pytest.approx(
        np.mean([c.data.metrics["test_accuracy"] for c in children]), abs=1e-9)
    assert metrics["test_accuracy"] == metrics["ensemble/2_members_flip/test_accuracy"], "the logged model has the flip"
    assert metrics["members_val_accuracy_mean"] == pytest.approx(
        np.mean([c.data.metrics["selection_val_accuracy"] for c in children]))
    assert "| 2 members + flip |" in done.stdout and f"runs:/{ensemble.info.run_id}" in done.stdout

    from rps.inference.predict import load_predictor
    from rps.tracking.models import local_model

    def model(uri):  # as rps.predict loads it: downloaded, checked against its run's digest
        return load_predictor(local_model(uri, mlruns_dir=str(tmp_path / "mlruns")))

    photos = np.random.default_rng(1).integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)
    members = [model(c.data.tags["rps.model_uri"]) for c in children]
    expected = np.mean([m(list(views)) for m in members for views in (photos, photos[:, :, ::-1])], axis=0)
    np.testing.assert_allclose(model(f"runs:/{ensemble.info.run_id}")(list(photos)), expected, atol=1e-4)
