"""Refit after choice on tiny data: a run without validation trains on every training example,
chooses nothing, and refuses what would need validation (rps.refit's end to end is in test_tune)."""

from __future__ import annotations

import pytest

from conftest import compose, prepared_run
from rps.common.errors import ConfigError
from rps.config import validate
from rps.training.outcome import OBJECTIVE, OBJECTIVE_TAG


def test_what_needs_validation_is_refused_without_it():
    validate(compose("split=official", "split.refit=true"))
    validate(compose("split.refit=true"))  # tutorial split: the same test, the rest of the pool trains
    for extra, key in ((["split.group_by=clusters"], "split.group_by"), (["split.folds=3"], "split.folds"),
                       (["early_stopping.enabled=true"], "early_stopping.enabled"),
                       (["optimizer.schedule=plateau"], "optimizer.schedule"),
                       (["export.formats=[tflite]"], "export.formats")):
        with pytest.raises(ConfigError, match=key):
            validate(compose("split=official", "split.refit=true", *extra))


@pytest.mark.parametrize("kind", ["official", "tutorial"])
def test_a_run_without_validation_trains_on_every_training_example(kind, tiny_tfds, hub_cache, monkeypatch, tmp_path):
    from rps.training.pipeline import train_and_evaluate
    from rps.training.report import Reporter

    monkeypatch.setenv("TFDS_DATA_DIR", str(tiny_tfds))
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(hub_cache))
    sizes = ["split.test_size=12"] if kind == "tutorial" else []
    common = [f"split={kind}", *sizes, "batch_size=16", "epochs=2", f"feature_cache.dir={tmp_path}"]
    with_val, without = Reporter(), Reporter()
    chosen = train_and_evaluate(prepared_run(compose(*common, "split.val_size=12")), with_val)
    refit = train_and_evaluate(prepared_run(compose(*common, "split.val_size=12", "split.refit=true")), without)
    params = without.recorded["params"]
    assert params["data.n_val"] == 0
    assert params["data.n_train"] == with_val.recorded["params"]["data.n_train"] + 12
    assert params["data.n_test"] == with_val.recorded["params"]["data.n_test"]
    union = {bytes(i) for part in (chosen.train_examples, chosen.val_examples) for i in part.images}
    assert {bytes(i) for i in refit.train_examples.images} == union, "validation's examples joined training"
    assert without.recorded["tags"]["rps.data.test_digest"] == with_val.recorded["tags"]["rps.data.test_digest"]
    assert OBJECTIVE in chosen.metrics and OBJECTIVE not in refit.metrics and refit.objective is None
    assert without.recorded["tags"][OBJECTIVE_TAG].startswith("none: a refit")
    assert set(refit.history) == {"train_accuracy", "train_loss"} and len(refit.history["train_loss"]) == 2
    assert 0 <= refit.metrics["test_accuracy"] <= 1 and refit.metrics["epochs_trained"] == 2


def test_the_refit_recipe_is_the_robust_recipe_trained_on_every_training_image():
    from omegaconf import OmegaConf

    robust = OmegaConf.to_container(compose("+experiment=official_robust", return_hydra_config=True), resolve=False)
    refit = OmegaConf.to_container(compose("+experiment=official_refit", return_hydra_config=True), resolve=False)
    validate(compose("+experiment=official_refit"))
    assert refit["split"] == robust["split"] | {"refit": True, "group_by": "none"}
    assert refit["experiment_name"] == "official_refit"
    for key in ("backbone", "head", "optimizer", "augment", "epochs", "batch_size", "seed"):
        assert refit[key] == robust[key], key
    assert refit["hydra"]["sweeper"]["params"] == robust["hydra"]["sweeper"]["params"]
