"""Fine-tuning on images (the path of backbones that cannot be split): phase 2 trains only the
backbone's top variables, with BatchNorm in inference mode. The tiny generated backbone is no
MobileNet-V2, so these runs take that path; tests/test_finetune_cache.py covers the other."""

import numpy as np
import pytest

import rps  # noqa: F401
from conftest import TINY_SPLIT, assert_a_refit_on_every_training_example, compose
from rps.data.pipelines import make_dataset
from rps.model.backbone import load_backbone
from rps.training.pipeline import prepare, train_and_evaluate
from rps.training.report import Reporter


@pytest.fixture(scope="module")
def setup(tiny_tfds, tiny_backbone):
    def make(*overrides):
        return prepare(compose(f"dataset.data_dir={tiny_tfds}", f"backbone.handle={tiny_backbone}", *TINY_SPLIT,
                               "backbone.image_size=32", *overrides))
    return make


@pytest.fixture(scope="module")
def plain_fine_tune(setup):
    """(report, outcome) of an unaugmented fine-tuning run, phase 1 on the feature cache (on by
    default): what a run without the cache and one augmenting phase 2 only are compared with."""
    report = Reporter()
    return report, train_and_evaluate(setup("backbone.trainable=true", "epochs=2", "backbone.fine_tune_epochs=1"),
                                      report)


ON_IMAGES = "off: the backbone cannot be split at the cut"  # the tiny backbone is no MobileNet-V2


def test_fine_tuning_changes_only_the_unfrozen_top_of_the_backbone(setup):
    prepared = setup("backbone.trainable=true", "backbone.fine_tune_from=0.5", "epochs=1",
                     "backbone.fine_tune_epochs=2", "optimizer.fine_tune_lr=0.01")
    before = {v.name: v.numpy().copy() for v in prepared.backbone.weights}  # the tiny module: w then b
    report = Reporter()
    out = train_and_evaluate(prepared, report)
    tuned = {v.name: v.numpy() for v in out.classifier.layers[0].weights}  # the run's own backbone
    assert np.array_equal(tuned["w:0"], before["w:0"]), "below the unfrozen top: unchanged"
    assert not np.array_equal(tuned["b:0"], before["b:0"]), "the unfrozen top variable was trained"
    for v in prepared.backbone.weights:  # the prepared backbone serves other runs: never changed
        assert np.array_equal(v.numpy(), before[v.name]), v.name
    assert [(step, m["phase"]) for step, m in report.epochs] == [(1, 1), (2, 2), (3, 2)]
    assert report.recorded["params"]["model.fine_tuned_variables"] == 1
    # phase 1 trained the head on cached features of the still-frozen backbone; phase 2 on images
    assert report.recorded["tags"]["feature_cache"] in ("built", "hit")
    assert report.recorded["tags"]["feature_cache_fine_tune"].startswith(ON_IMAGES)
    assert len(out.history["val_accuracy"]) == 3
    # the returned probabilities are the fine-tuned image model's, not phase 1's head on stale features
    images = np.concatenate([x for x, _ in make_dataset(out.test_examples, 32, 64, 3).as_numpy_iterator()])
    np.testing.assert_allclose(out.classifier(images, training=False).numpy(), out.probs, atol=1e-5)


@pytest.mark.slow  # > 9 s: kept out of the fast tier (docs/testing.md)
def test_phase_one_on_cached_features_matches_phase_one_on_images(setup, plain_fine_tune):
    """The cache only changes how phase 1 is computed: both ways fine-tune from the same head."""
    report = Reporter()
    uncached = report, train_and_evaluate(setup("backbone.trainable=true", "epochs=2", "backbone.fine_tune_epochs=1",
                                                "feature_cache.enabled=false"), report)
    cached = plain_fine_tune  # feature_cache.enabled=null
    assert uncached[0].recorded["tags"]["feature_cache"] == "off: feature_cache.enabled=false"
    assert cached[0].recorded["tags"]["feature_cache"] in ("built", "hit")
    for key in ("train_loss", "val_loss"):  # phase 1 (2 epochs) agrees
        np.testing.assert_allclose(cached[1].history[key][:2], uncached[1].history[key][:2], rtol=0.02)
    # phase 2 starts from the same head (its train loss differs only by dropout's random draws)
    np.testing.assert_allclose(cached[1].history["val_loss"], uncached[1].history["val_loss"], rtol=0.02)


@pytest.mark.slow  # > 9 s: kept out of the fast tier (docs/testing.md)
def test_fine_tuning_with_augmentation_runs_both_phases_on_images_also_in_a_refit(setup):
    """A refit (no validation split) fine-tunes on images on every training example."""
    report = Reporter()
    out = train_and_evaluate(setup("backbone.trainable=true", "epochs=1", "backbone.fine_tune_epochs=2",
                                   "augment=basic", "split.refit=true"), report)
    assert report.recorded["tags"]["feature_cache"] == "off: training images are augmented (augment=basic)"
    assert report.recorded["tags"]["feature_cache_fine_tune"].startswith(ON_IMAGES)
    assert_a_refit_on_every_training_example(report, out)


@pytest.mark.slow  # > 9 s: kept out of the fast tier (docs/testing.md)
def test_augmenting_only_the_fine_tuning_phase_keeps_phase_one_on_the_cache(setup, plain_fine_tune):
    report = Reporter()
    augmented = train_and_evaluate(setup("backbone.trainable=true", "epochs=2", "backbone.fine_tune_epochs=1",
                                         "augment=basic", "augment.head_phase=false"), report).history
    # the unaugmented run: augment=none (the default), where augment.head_phase changes nothing
    plain = plain_fine_tune[1].history
    for recorded in (report, plain_fine_tune[0]):
        assert recorded.recorded["tags"]["feature_cache"] in ("built", "hit")
    np.testing.assert_allclose(plain["train_loss"][:2], augmented["train_loss"][:2], rtol=1e-5)  # phase 1: same
    assert abs(plain["train_loss"][2] - augmented["train_loss"][2]) > 1e-4, "phase 2 saw augmented images"


def test_a_frozen_run_leaves_the_backbone_alone(setup):
    prepared = setup("epochs=2", "feature_cache.enabled=false")
    before = [v.numpy().copy() for v in prepared.backbone.weights]
    report = Reporter()
    train_and_evaluate(prepared, report)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, prepared.backbone.weights))
    assert all("phase" not in m for _, m in report.epochs), "no phases without fine-tuning"


def test_backbone_runs_in_inference_mode_and_counts_its_top(tiny_backbone):
    backbone = load_backbone(str(tiny_backbone), 32)[0]
    assert backbone.unfreeze_top(0.5) == 1 and len(backbone.trainable_weights) == 1
    assert len(backbone.non_trainable_weights) == 1
    assert backbone.unfreeze_top(5) == 2 and len(backbone.trainable_weights) == 2
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(backbone(x, training=True).numpy(), backbone(x, training=False).numpy())
