"""The learning gate: on separable tiny data the classifier must actually learn (in the spirit of
make_image_classifier's --assert_accuracy_at_least), not only run."""

import pytest

from conftest import TINY_SPLIT, compose, prepared_run

GATE = 0.9  # chance is 1/3 on three balanced classes


@pytest.mark.parametrize("cached", [True, False])
def test_the_head_learns_the_tiny_classes(tiny_tfds, tiny_backbone, tmp_path, cached):
    from rps.training.pipeline import train_and_evaluate

    cfg = compose(f"dataset.data_dir={tiny_tfds}", f"backbone.handle={tiny_backbone}", *TINY_SPLIT,
                  "backbone.image_size=32", "epochs=10", "optimizer.lr=0.01",
                  f"feature_cache.enabled={str(cached).lower()}", f"feature_cache.dir={tmp_path}")
    out = train_and_evaluate(prepared_run(cfg))
    assert out.metrics["selection_val_accuracy"] >= GATE, out.metrics
    assert out.metrics["test_accuracy"] >= GATE, out.metrics
    assert out.history["train_loss"][-1] < out.history["train_loss"][0]
