"""The hub backbone + head model, its export, and the image-size check."""

import numpy as np
import pytest

import rps  # noqa: F401
from conftest import compose
from rps.model.export import ExportedClassifier
from rps.model.head import build_classifier, build_head, compile_for_training
from rps.model.backbone import count_params, load_backbone
from rps.common.errors import ConfigError

import tensorflow as tf


@pytest.fixture(scope="module")
def classifier(tiny_backbone):
    backbone, dim = load_backbone(str(tiny_backbone), 32)
    head = build_head(dim, 3, compose().head)
    clf = build_classifier(backbone, head, 32)
    compile_for_training(clf, compose().optimizer)
    return clf, head, dim


def test_only_the_head_is_trainable(classifier):
    clf, head, dim = classifier
    counts = count_params(clf)
    assert dim == 16
    assert counts == {"trainable": dim * 3 + 3, "frozen": 8 * 8 * 3 * 16 + 16}
    before = [w.numpy().copy() for w in clf.layers[0].weights]
    x = np.random.default_rng(0).random((8, 32, 32, 3)).astype(np.float32)
    y = tf.one_hot(np.arange(8) % 3, 3)
    head_before = [w.numpy().copy() for w in head.weights]
    clf.fit(x, y, epochs=2, verbose=0)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, clf.layers[0].weights))
    assert not all(np.array_equal(a, w.numpy()) for a, w in zip(head_before, head.weights))


def test_hidden_layer_and_loss_match_the_outputs(tiny_backbone):
    head = build_head(16, 3, compose("head.hidden_units=8").head)
    assert [layer.__class__.__name__ for layer in head.layers] == ["Dense", "Dropout", "Dense"]
    assert head.layers[-1].activation.__name__ == "softmax"
    clf = build_classifier(load_backbone(str(tiny_backbone), 32)[0], head, 32)
    compile_for_training(clf, compose("optimizer=sgd").optimizer)
    assert clf.loss.get_config()["from_logits"] is False
    assert isinstance(clf.optimizer, tf.keras.optimizers.SGD)


def test_export_is_self_contained_and_predicts_the_same(classifier, tmp_path):
    clf, _, _ = classifier
    x = np.random.default_rng(1).random((5, 32, 32, 3)).astype(np.float32)
    exported = ExportedClassifier(*clf.layers, ["rock", "paper", "scissors"], 32)
    exported.save(str(tmp_path / "m"))
    loaded = tf.saved_model.load(str(tmp_path / "m"))
    np.testing.assert_allclose(loaded(x).numpy(), clf(x, training=False).numpy(), atol=1e-6)
    assert [n.decode() for n in loaded.class_names.numpy()] == ["rock", "paper", "scissors"]
    assert int(loaded.image_size.numpy()) == 32


def test_image_size_the_backbone_cannot_take_is_a_config_error(tmp_path):
    from rps.synthetic import save_tiny_backbone

    fixed = save_tiny_backbone(tmp_path / "fixed", input_size=32)
    load_backbone(str(fixed), 32)
    with pytest.raises(ConfigError, match=r"backbone.image_size=48 .* shape \(None, 32, 32, 3\)"):
        load_backbone(str(fixed), 48)


def test_a_temperature_in_the_export_scales_its_probabilities_and_keeps_its_classes(classifier, tmp_path):
    from rps.training.calibration import scaled

    clf, _, _ = classifier
    x = np.random.default_rng(2).random((8, 32, 32, 3)).astype(np.float32)
    ExportedClassifier(*clf.layers, ["rock", "paper", "scissors"], 32, temperature=2.5).save(str(tmp_path / "m"))
    loaded = tf.saved_model.load(str(tmp_path / "m"))
    plain = clf(x, training=False).numpy()
    np.testing.assert_allclose(loaded(x).numpy(), scaled(plain, 2.5), atol=1e-5)
    assert (loaded(x).numpy().argmax(1) == plain.argmax(1)).all() and float(loaded.temperature.numpy()) == 2.5
