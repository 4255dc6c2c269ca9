"""Fine-tuning on activations cached below the cut (rps.backbone_split, rps.finetune_cache).

The backbone here is a real Keras MobileNetV2 in miniature (alpha 0.35, 96 px, random weights),
saved in the offline mirror's hub layout: the structure the split must get right (residual
blocks, BatchNorm, the [0, 1] -> [-1, 1] input scaling), at a size tests can afford.
"""

import numpy as np
import pytest

import rps  # noqa: F401
from conftest import SHARED_OFFLINE, TINY_SPLIT, assert_a_refit_on_every_training_example, compose
from rps.data.pipelines import make_dataset
from rps.model.backbone import Backbone, count_params, load_backbone
from rps.model.export import ExportedClassifier
from rps.model.split import SplitUnavailable, split_backbone
from rps.training import finetune_cache
from rps.training.pipeline import prepare, train_and_evaluate
from rps.training.report import Reporter

SIZE = 96


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    from rps.synthetic import save_mobilenet_backbone

    return save_mobilenet_backbone(tmp_path_factory.mktemp("mobilenet") / "mnv2", image_size=SIZE)


@pytest.fixture(scope="module")
def backbone(mobilenet):
    return load_backbone(str(mobilenet), SIZE)[0]


def _images(n=4, seed=1):
    return np.random.default_rng(seed).random((n, SIZE, SIZE, 3)).astype(np.float32)


def test_lower_then_upper_equals_the_hub_module(backbone):
    split = split_backbone(backbone, SIZE, 0.3)
    images = _images()
    reference = backbone(images).numpy()
    np.testing.assert_allclose(split.upper(split.lower(images)).numpy(), reference, atol=1e-5 * np.abs(reference).max())
    # the cut of unfreeze_top(0.3): the same count of variables, the same values, from the top
    assert (split.cache_layer, split.first_trained_layer) == ("block_11_add", "block_12_expand_BN")
    fresh = Backbone(backbone._handle, trainable=False)
    assert fresh.unfreeze_top(0.3) == split.trained_variables == 47
    assert [w.shape for w in split.upper.trainable_weights] == [w.shape for w in fresh.trainable_weights]
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(split.upper.trainable_weights, fresh.trainable_weights))


MIRROR = SHARED_OFFLINE / "tfhub" / "145bb06ec3b59b08fb564ab752bd5aa222bfb50a"  # sha1 of the default handle


@pytest.mark.mirrors
@pytest.mark.skipif(not MIRROR.is_dir(), reason=f"real mirrors absent: no {MIRROR}")
def test_the_real_mobilenet_mirror_splits_exactly():
    backbone = load_backbone(str(MIRROR), 224)[0]
    split = split_backbone(backbone, 224, 0.3)
    images = np.random.default_rng(3).random((8, 224, 224, 3)).astype(np.float32)
    reference = backbone(images).numpy()
    assert np.abs(split.upper(split.lower(images)).numpy() - reference).max() <= 3e-5  # features up to ~6
    assert (split.cache_layer, split.first_trained_layer, split.trained_variables) == \
        ("block_11_add", "block_12_expand_BN", 47)
    assert split.activation_shape == (14, 14, 96)
    assert backbone.unfreeze_top(0.3) == 47  # the image path trains the same parameters
    assert count_params(split.upper)["trainable"] == count_params(backbone)["trainable"] > 1_000_000


@pytest.mark.parametrize("top, trained", [(47, 47), (46, 47), (45, 45), (3, 3), (1, 2)])
def test_a_cut_inside_a_layer_trains_the_whole_layer(backbone, top, trained):
    """46 names block_12_expand_BN's beta but not its gamma: the layer is trained whole."""
    assert split_backbone(backbone, SIZE, top).trained_variables == trained


def test_a_cut_at_the_first_layer_leaves_nothing_to_cache(backbone):
    with pytest.raises(SplitUnavailable, match="nothing below the cut"):
        split_backbone(backbone, SIZE, 0.999)


def test_a_backbone_that_is_no_mobilenet_cannot_be_split(tiny_backbone):
    with pytest.raises(SplitUnavailable, match="do not map by order and shape"):
        split_backbone(load_backbone(str(tiny_backbone), 32)[0], 32, 0.3)


def test_written_back_weights_make_the_module_compute_the_trained_split(mobilenet):
    backbone = load_backbone(str(mobilenet), SIZE)[0]  # its own: this test changes its weights
    split = split_backbone(backbone, SIZE, 0.3)
    rng = np.random.default_rng(2)
    for weight in split.upper.trainable_weights:  # stands in for training
        weight.assign(weight.numpy() * rng.uniform(0.5, 1.5, weight.shape).astype(np.float32))
    images = _images()
    trained = split.upper(split.lower(images)).numpy()
    assert np.abs(trained - backbone(images).numpy()).max() > 1e-2, "the module still holds the old weights"
    split.write_back()
    np.testing.assert_allclose(backbone(images).numpy(), trained, atol=1e-5 * np.abs(trained).max())


@pytest.fixture(scope="module")
def run(tiny_tfds, mobilenet, tmp_path_factory):
    """``run(*overrides)``: a fine-tuning run on the tiny data and MobileNet (their own caches)."""
    cache = tmp_path_factory.mktemp("cache")

    def make(*overrides):
        cfg = compose(f"dataset.data_dir={tiny_tfds}", f"backbone.handle={mobilenet}", *TINY_SPLIT,
                      f"backbone.image_size={SIZE}", "backbone.trainable=true", "epochs=1",
                      "backbone.fine_tune_epochs=2", "optimizer.fine_tune_lr=0.001", f"feature_cache.dir={cache}",
                      *overrides)
        report = Reporter()
        return report, train_and_evaluate(prepare(cfg), report), cache
    return make


@pytest.fixture(scope="module")
def both_ways(run):
    """The same unaugmented run fine-tuned on cached activations and on images (no dropout: no
    random draws that the two ways could make differently)."""
    return {cached: run(f"backbone.fine_tune_cache={cached}", "head.dropout=0") for cached in ("true", "false")}


@pytest.mark.slow
def test_cached_fine_tuning_equals_fine_tuning_on_images(both_ways):
    """Same seed, no augmentation: the same examples in the same order through the same network;
    only float16 storage and XNNPACK's rounding differ."""
    (cached, fast, _), (uncached, slow, _) = both_ways["true"], both_ways["false"]
    assert cached.recorded["tags"]["feature_cache_fine_tune"].startswith("on: activations below the cut")
    assert uncached.recorded["tags"]["feature_cache_fine_tune"] == "off: backbone.fine_tune_cache=false, fine-tuning on images"
    assert cached.recorded["params"]["model.fine_tune_trainable_params"] == \
        uncached.recorded["params"]["model.fine_tune_trainable_params"]
    assert [m["phase"] for _, m in cached.epochs] == [1, 2, 2]
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose(fast.history[key], slow.history[key], rtol=2e-3)
    assert abs(fast.history["train_loss"][2] - fast.history["train_loss"][1]) > 1e-2, "phase 2 trained"
    np.testing.assert_allclose(fast.probs, slow.probs, atol=2e-3)


@pytest.mark.slow
def test_the_exported_model_predicts_what_the_split_model_was_evaluated_with(both_ways, tmp_path):
    import tensorflow as tf

    _, out, _ = both_ways["true"]
    saved = tmp_path / "exported"
    ExportedClassifier(out.backbone, out.head, out.class_names, SIZE).save(str(saved))
    images = np.concatenate([x for x, _ in make_dataset(out.test_examples, SIZE, 64, 3).as_numpy_iterator()])
    exported = tf.saved_model.load(str(saved))(images).numpy()
    np.testing.assert_allclose(exported, out.probs, atol=2e-3)  # the split model saw float16 activations
    assert np.array_equal(exported.argmax(1), out.probs.argmax(1))


@pytest.mark.slow
def test_augmented_views_are_cached_and_reused_in_a_refit_on_every_training_example(run, both_ways):
    """A fine-tuning refit (no validation split) trains both phases, the second on cached views.
    ``both_ways`` has filled the unaugmented pool's entry (its cached run), so this run builds only views."""
    augment = ("augment=basic", "augment.head_phase=false", "seed=5", "split.refit=true")
    first, out, cache = run(*augment)
    again, _, _ = run(*augment)
    assert_a_refit_on_every_training_example(first, out)
    assert first.recorded["tags"]["activation_cache"] == "built, hit"  # 2 new views; the pool's entry exists
    assert again.recorded["tags"]["activation_cache"] == "hit"
    assert again.recorded["metrics"]["timing_activation_cache_seconds"] < first.recorded["metrics"][
        "timing_activation_cache_seconds"], "a hit only reads"
    assert again.recorded["tags"]["activation_cache_key"] == first.recorded["tags"]["activation_cache_key"]
    train_views = [a for a in (np.load(p)["features"] for p in cache.glob("*.npz")) if a.ndim == 4 and len(a) == 72]
    assert len(train_views) == 2 and not np.array_equal(*train_views), "one view per fine-tuning epoch, each its own"
    assert [m["phase"] for _, m in again.epochs] == [1, 2, 2]


def test_each_seed_and_view_has_its_own_augmentation():
    cfg = compose("augment=basic", "augment.head_phase=false", "backbone.trainable=true")
    ids = {finetune_cache.augmentation_id(cfg, v) for v in (0, 1)} | {finetune_cache.augmentation_id(
        compose("augment=basic", "augment.head_phase=false", "backbone.trainable=true", "seed=1"), 0)}
    assert len(ids) == 3 and finetune_cache.augmentation_id(cfg, None) == "none"
    keys = {finetune_cache.activation_key("examples", "backbone", SIZE, "xnnpack", "block_11_add", a) for a in ids}
    assert len(keys) == 3


def test_views_cycle_when_capped():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"augment": {"kind": "basic", "head_phase": False},
                            "backbone": {"trainable": True, "fine_tune_epochs": 3, "fine_tune_views": None}})
    assert finetune_cache.view_count(cfg) == 3
    cfg.backbone.fine_tune_views = 1
    assert finetune_cache.view_count(cfg) == 1
    cfg.augment.kind = "none"
    assert finetune_cache.view_count(cfg) == 0


def test_training_batches_depend_on_the_seed_and_the_epoch_only():
    """As on images (rps.data.pipelines.EpochStream): epoch e alone equals epoch e after the
    others (what resume needs), every epoch holds each example once, views cycle."""
    import tensorflow as tf

    n, views = 50, 2
    activations = tf.constant(np.arange(views * n, dtype=np.float16).reshape(views * n, 1))
    rows = np.arange(views * n).reshape(views, n)
    stream = finetune_cache.train_stream(activations, rows, np.eye(3, dtype=np.float32)[np.arange(n) % 3], 3, 16)

    def rows_seen(start, end):
        return [int(v) for x, _ in stream.epochs(start, end).as_numpy_iterator() for v in x[:, 0]]

    straight = rows_seen(0, 3)
    assert rows_seen(2, 3) == straight[2 * n:] and stream.steps == 4
    assert sorted(straight[:n]) == list(range(n)) and sorted(straight[n:2 * n]) == list(range(n, 2 * n))
    assert sorted(straight[2 * n:]) == list(range(n)) and straight[2 * n:] != straight[:n]


@pytest.mark.slow
def test_grouped_k_fold_fine_tunes_a_model_per_fold(run, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="rps.training.pipeline")
    report, out, _ = run("split=official", "split.test_size=null", "split.group_by=clusters", "split.groups=2",
                         "split.folds=2", "backbone.fine_tune_epochs=1")  # 3+ folds: tests/test_validation.py
    metrics = report.recorded["metrics"]
    folds = [metrics[f"cv/fold_{k}_val_accuracy"] for k in range(2)]
    assert out.objective == pytest.approx(np.mean(folds)) and metrics["model_val_accuracy"] == folds[0]
    assert "head and fine-tuning" in report.recorded["tags"]["selection.measures"]
    fine_tuned = [r for r in caplog.records if r.getMessage().startswith("Fine-tuning the top of the backbone")]
    assert len(fine_tuned) == 2, "the run's model and one per other fold"
