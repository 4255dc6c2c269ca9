"""Label smoothing, L2 on the head, learning-rate schedules and early stopping, as configured."""

import numpy as np
import pytest

import rps  # noqa: F401
from conftest import compose
from rps.model.head import build_head, compile_for_training, make_optimizer
from rps.training.loop import fit, schedule_callbacks

import tensorflow as tf

keras = tf.keras


def test_l2_and_label_smoothing_reach_the_model():
    head = build_head(8, 3, compose("head.l2=0.01", "head.hidden_units=4").head)
    assert all(layer.kernel_regularizer is not None for layer in head.layers if isinstance(layer, keras.layers.Dense))
    head(np.ones((2, 8), np.float32))
    assert len(head.losses) == 2
    compile_for_training(head, compose().optimizer, 10, label_smoothing=0.1)
    assert head.loss.get_config()["label_smoothing"] == pytest.approx(0.1)
    plain = build_head(8, 3, compose().head)
    plain(np.ones((2, 8), np.float32))
    assert plain.losses == []


def test_schedules():
    def lrs(optimizer, checkpoints=(20, 40)):
        """The learning rate the optimizer used at its 20th and 40th update."""
        var, seen = tf.Variable([1.0]), []
        for step in range(1, max(checkpoints) + 1):
            optimizer.apply_gradients([(tf.constant([1.0]), var)])
            if step in checkpoints:
                seen.append(float(optimizer.learning_rate))
        return seen

    at_20, at_40 = lrs(make_optimizer(compose("optimizer.schedule=cosine").optimizer, total_steps=40))
    assert 4e-4 < at_20 < 6e-4 and at_40 < 1e-5  # cosine: half-way down at 20 of 40 steps, ~0 at the end
    assert lrs(make_optimizer(compose().optimizer, total_steps=40)) == pytest.approx([1e-3, 1e-3])
    plateau = schedule_callbacks(compose("optimizer.schedule=plateau"))
    assert [type(c).__name__ for c in plateau] == ["ReduceLROnPlateau"]
    assert schedule_callbacks(compose()) == []


def test_early_stopping_restores_the_best_epochs_weights():
    """A head that overfits noisy labels: validation accuracy peaks, then falls."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 16)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    noisy = np.where(rng.random(200) < 0.4, 1 - y[:200], y[:200])
    tr = tf.data.Dataset.from_tensor_slices((x[:200], tf.one_hot(noisy, 2))).batch(8)
    val = tf.data.Dataset.from_tensor_slices((x[200:], tf.one_hot(y[200:], 2))).batch(40)
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.layers.InputLayer(input_shape=(16,)), keras.layers.Dense(64, activation="relu"),
                            keras.layers.Dense(2, activation="softmax")])
    compile_for_training(net, compose("optimizer.lr=0.05").optimizer)
    cfg = compose("early_stopping.enabled=true", "early_stopping.patience=3")
    history = fit(net, tr, val, 40, lambda m, e: None, schedule_callbacks(cfg))
    curve = history["val_accuracy"]
    assert len(curve) < 40, "stopped early"
    final = np.mean(net.predict(x[200:], verbose=0).argmax(1) == y[200:])
    assert final == pytest.approx(max(curve)) and max(curve) > curve[-1]
