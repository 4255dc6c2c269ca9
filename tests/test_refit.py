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


CHOSEN = {"official": [], "tutorial": ["split.test_size=12"],
          "official-grouped": ["split.group_by=clusters", "split.groups=2"],
          "official-folds": ["split.group_by=clusters", "split.groups=2", "split.folds=2"]}


@pytest.mark.parametrize("chosen_as", list(CHOSEN))
def test_a_run_without_validation_trains_on_every_training_example(chosen_as, tiny_tfds, hub_cache, monkeypatch,
                                                                     tmp_path):
    from rps.training.pipeline import train_and_evaluate
    from rps.training.report import Reporter

    monkeypatch.setenv("TFDS_DATA_DIR", str(tiny_tfds))
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(hub_cache))
    kind = chosen_as.split("-")[0]
    sizes = ["split.test_size=12"] if kind == "tutorial" else []
    common = [f"split={kind}", *sizes, "batch_size=16", "epochs=2", f"feature_cache.dir={tmp_path}"]
    with_val, without = Reporter(), Reporter()
    chosen = train_and_evaluate(prepared_run(compose(*common, "split.val_size=12", *CHOSEN[chosen_as])), with_val)
    refit = train_and_evaluate(prepared_run(compose(*common, "split.val_size=12", "split.refit=true")), without)
    params = without.recorded["params"]
    assert params["data.n_val"] == 0
    assert params["data.n_train"] == with_val.recorded["params"]["data.n_train"] + with_val.recorded["params"]["data.n_val"]
    assert params["data.n_test"] == with_val.recorded["params"]["data.n_test"]
    union = {bytes(i) for part in (chosen.train_examples, chosen.val_examples) for i in part.images}
    assert {bytes(i) for i in refit.train_examples.images} == union, "validation's examples joined training"
    assert without.recorded["tags"]["rps.data.test_digest"] == with_val.recorded["tags"]["rps.data.test_digest"], \
        "the refit is tested on the images (in the order) the chosen run was"
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


def test_a_refit_has_a_model_card_that_says_what_it_is(tmp_path):
    from conftest import store
    from rps.tracking import model_card

    client = store(tmp_path)
    run_id = client.create_run(client.create_experiment("e"), tags={
        "rps.refit_of": "c" * 32, "rps.refit_parent": "p" * 32, OBJECTIVE_TAG: "none: a refit"}).info.run_id
    for key, value in {"data.n_val": "0", "data.n_train": "2520", "split.kind": "official", "split.refit": "True",
                       "data.class_names": "rock,paper,scissors"}.items():
        client.log_param(run_id, key, value)
    for key, value in {"test_accuracy": 0.93, "test_loss": 0.2, "test_ece": 0.05}.items():
        client.log_metric(run_id, key, value)
    card = model_card.render(client.get_run(run_id), "rps", "3", "the best validation objective")
    assert f"a refit (validation's images trained too) of run `{'c' * 32}`" in card and "p" * 32 in card
    assert "| expected calibration error, test `test_ece` | 0.0500 |" in card and "No temperature" in card
    assert "validation set has" not in card, "a refit has no validation set"


def test_the_epochs_a_refit_keeps_are_those_the_chosen_model_trained_for(tmp_path):
    from conftest import store
    from rps.tracking import phase_epochs

    client = store(tmp_path)
    experiment = client.create_experiment("e")
    fine_tuned = client.create_run(experiment).info.run_id  # phase 1: epochs 1-4, phase 2: epochs 5-7
    for step, (phase, accuracy) in enumerate([(1, .5), (1, .8), (1, .8), (1, .7), (2, .9), (2, .95), (2, .93)], start=1):
        client.log_metric(fine_tuned, "phase", phase, step=step)
        client.log_metric(fine_tuned, "val_accuracy", accuracy, step=step)
    assert phase_epochs(fine_tuned, best=False) == {1: 4, 2: 3}, "every epoch trained"
    assert phase_epochs(fine_tuned, best=True) == {1: 2, 2: 2}, "up to the first best epoch of each phase"
    frozen = client.create_run(experiment).info.run_id  # no phase metric
    for step, accuracy in enumerate([.5, .9, .6], start=1):
        client.log_metric(frozen, "val_accuracy", accuracy, step=step)
    assert phase_epochs(frozen, best=True) == {1: 2} and phase_epochs(frozen, best=False) == {1: 3}
