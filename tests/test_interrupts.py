"""Ctrl-C and SIGTERM reach the code that ends a run as the interrupt they are: never lost inside a
garbage collection, never replaced by the error of a TensorFlow scope they broke."""

from __future__ import annotations

import signal
import sys

import numpy as np
import pytest

import rps  # noqa: F401
from conftest import compose
from rps.common.errors import Terminated
from rps.model.head import compile_for_training
from rps.training.loop import fit

import tensorflow as tf

keras = tf.keras


def _tiny_training():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    onehot = tf.one_hot((x[:, 0] > 0).astype(int), 2)
    net = keras.Sequential([keras.layers.InputLayer(input_shape=(8,)), keras.layers.Dense(2, activation="softmax")])
    compile_for_training(net, compose().optimizer)
    data = tf.data.Dataset.from_tensor_slices((x, onehot)).batch(16)  # 4 batches an epoch
    return net, data


class SignalsDuringABatch(keras.callbacks.Callback):
    """Sends ``signals`` to this process as batch 1 of epoch 2 begins; records the batches that end."""

    def __init__(self, *signals: int):
        super().__init__()
        self.signals, self.epoch, self.ended = signals, 0, []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == (2, 1):
            for signum in self.signals:
                signal.raise_signal(signum)  # handled here and now, as a signal from outside would be

    def on_train_batch_end(self, batch, logs=None):
        self.ended.append((self.epoch, batch))


@pytest.mark.parametrize("signum, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)])
def test_a_signal_during_training_is_raised_once_the_batch_it_landed_in_ends(rps_signal_handlers, signum, raised):
    """Raised where it lands, it could break a TensorFlow device scope being entered; its exit then
    raised "Exiting device scope without proper scope nesting" instead, and the run ended FAILED
    (seen in tests/test_e2e.py's signal test, 2 of 14 repeats on 2026-12-04)."""
    net, data = _tiny_training()
    sender, epochs = SignalsDuringABatch(signum), []
    with pytest.raises(raised):
        fit(net, data, data, 5, lambda metrics, epoch: epochs.append(epoch), [sender])
    assert sender.ended[-1] == (2, 1), "the batch it landed in ended, the next did not begin"
    assert epochs == [1], "only finished epochs reach the run"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "rps's handlers are back"


def test_a_second_signal_acts_at_once(rps_signal_handlers):
    """Ctrl-C pressed twice: the second does not wait for the batch to end."""
    net, data = _tiny_training()
    sender = SignalsDuringABatch(signal.SIGINT, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        fit(net, data, data, 5, lambda metrics, epoch: None, [sender])
    assert sender.ended[-1] == (2, 0), "the batch it landed in did not end"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_error_an_interrupt_caused_inside_training_gives_way_to_the_interrupt(rps_signal_handlers):
    """A second Ctrl-C may still break a scope: the error its exit raises (with the interrupt as its
    context, a few errors down if the scope was being traced) is not what ended the run."""

    class BrokenScope(keras.callbacks.Callback):
        """As when the scope was being traced: tracing raised its own error while handling the scope's."""

        def on_train_batch_begin(self, batch, logs=None):
            try:
                try:
                    raise KeyboardInterrupt
                except KeyboardInterrupt:
                    raise RuntimeError("Exiting device scope without proper scope nesting")
            except RuntimeError:
                raise RuntimeError("in user code: ...")

    class Failing(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            raise RuntimeError("a real error")

    net, data = _tiny_training()
    with pytest.raises(KeyboardInterrupt):
        fit(net, data, data, 2, lambda metrics, epoch: None, [BrokenScope()])
    with pytest.raises(RuntimeError, match="a real error"):
        fit(net, data, data, 2, lambda metrics, epoch: None, [Failing()])


def test_a_signal_during_a_collection_is_delivered_after_it_not_lost(rps_signal_handlers):
    """Python drops an exception raised inside a finalizer: release_memory's collection holds
    SIGINT/SIGTERM and delivers them once it is over."""
    import gc
    import weakref

    from rps.common.errors import Terminated, signals_held

    class Garbage:
        pass

    def collect_with_a_signal_in_a_finalizer(signum):
        item = Garbage()
        item.cycle = item
        weakref.finalize(item, signal.raise_signal, signum)  # the signal lands inside gc
        del item
        gc.collect()

    # The objects already here (TensorFlow's, MLflow's: ~400,000) are set aside, so each full
    # collection below looks at this test's garbage only: ~1 s less each, the same finalizer run.
    gc.freeze()
    try:
        lost, hook = [], sys.unraisablehook
        sys.unraisablehook = lambda unraisable: lost.append(unraisable.exc_type)
        try:
            collect_with_a_signal_in_a_finalizer(signal.SIGINT)  # unheld: no exception comes out
        finally:
            sys.unraisablehook = hook
        assert lost == [KeyboardInterrupt], "Python drops it"
        for signum, raised in ((signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)):
            reached = []
            with pytest.raises(raised):
                with signals_held():
                    collect_with_a_signal_in_a_finalizer(signum)
                    reached.append("end of block")
            assert reached == ["end of block"]
    finally:
        gc.unfreeze()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "handlers are restored"
