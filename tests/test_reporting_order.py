"""The order and steps a training run's metrics are written in (so MLflow's UI opens on the
objective), the objective as it stands after each epoch, and which config values become params."""

from __future__ import annotations

import mlflow
import pytest

from rps.tracking.ordering import MetricOrder
from rps.tracking.params import run_params
from rps.tracking.reporter import MlflowReporter
from rps.training.outcome import OBJECTIVE, OBJECTIVE_LOSS, RunningObjective


def epoch(acc, loss, phase=None):
    return {"val_accuracy": acc, "val_loss": loss} | ({"phase": phase} if phase else {})


def test_the_running_objective_is_the_exported_models_and_leads_each_epoch():
    restored, last = RunningObjective(best_of_phase=True), RunningObjective(best_of_phase=False)
    seen = [(restored(epoch(a, l)), last(epoch(a, l))) for a, l in ((0.5, 1.0), (0.8, 0.6), (0.8, 0.5), (0.7, 0.4))]
    assert [list(r)[0] for r, _ in seen] == [OBJECTIVE] * 4  # first key of every epoch's batch
    # early stopping restores the first best epoch (Keras: strictly better replaces it)
    assert [(r[OBJECTIVE], r[OBJECTIVE_LOSS]) for r, _ in seen] == [(0.5, 1.0), (0.8, 0.6), (0.8, 0.6), (0.8, 0.6)]
    assert [(x[OBJECTIVE], x[OBJECTIVE_LOSS]) for _, x in seen] == [(0.5, 1.0), (0.8, 0.6), (0.8, 0.5), (0.7, 0.4)]
    # fine-tuning starts another early-stopping record
    assert restored(epoch(0.6, 0.9, phase=2))[OBJECTIVE] == 0.6


def test_epochs_first_final_values_wait_for_the_model_diagnostics_last():
    order = MetricOrder()
    assert order.summary({"skipped_corrupt_images": 0, "timing_feature_load_seconds": 0.1}) == []
    first = order.epoch({OBJECTIVE: 0.5, "val_accuracy": 0.5}, 1)
    assert first == [({OBJECTIVE: 0.5, "val_accuracy": 0.5}, 1), ({"skipped_corrupt_images": 0}, 0)]
    order.epoch({OBJECTIVE: 0.7, "val_accuracy": 0.7}, 2)
    assert order.summary({"cv/fold_1": 0.6, "test_accuracy": 0.9, OBJECTIVE: 0.65, "epochs_trained": 2}) == []
    assert order.end_step == 3
    # linked to the model: the objective first, after its running values; single values at step 0
    assert order.for_model() == [({OBJECTIVE: 0.65}, 3), ({"cv/fold_1": 0.6, "test_accuracy": 0.9, "epochs_trained": 2}, 0)]
    assert order.summary({"tflite_test_accuracy": 0.9}) == [({"tflite_test_accuracy": 0.9}, 0)]
    assert order.rest() == [({"timing_feature_load_seconds": 0.1}, 0)]


def test_a_run_without_a_model_writes_its_final_values_at_the_end():
    order = MetricOrder()
    order.epoch({OBJECTIVE: 0.5}, 1)
    order.summary({"test_accuracy": 0.9, OBJECTIVE: 0.5})
    assert order.rest() == [({OBJECTIVE: 0.5}, 2), ({"test_accuracy": 0.9}, 0)]


def test_the_store_lists_the_objective_first_and_keeps_its_final_value(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    client = mlflow.MlflowClient()
    run_id = client.create_run(client.create_experiment("e", artifact_location=str(tmp_path / "a"))).info.run_id
    report = MlflowReporter(run_id, training=True)
    report.metrics({"timing_feature_extraction_seconds": 3.0})  # what a run reports first
    for step, accuracy in ((1, 0.5), (2, 0.75)):
        report.epoch({OBJECTIVE: accuracy, "val_accuracy": accuracy, "train_loss": 1.0}, step)
    report.metrics({OBJECTIVE: 0.7, "test_accuracy": 0.9})  # e.g. the mean over K folds
    report.finish()
    run = client.get_run(run_id)
    assert list(run.data.metrics) == [OBJECTIVE, "val_accuracy", "train_loss", "test_accuracy",
                                      "timing_feature_extraction_seconds"]
    assert run.data.metrics[OBJECTIVE] == 0.7  # the final value is the latest, not the last epoch's
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, OBJECTIVE)] == [(1, 0.5), (2, 0.75), (3, 0.7)]
    assert [m.step for m in client.get_metric_history(run_id, "test_accuracy")] == [0]  # a single value: a bar


CONFIG = {"split.kind": "tutorial", "split.val_size": 12.0, "split.test_size": 0.1, "split.group_by": "none",
          "split.groups": 5, "split.pattern": None, "backbone.trainable": False, "backbone.fine_tune_from": 0.3,
          "backbone.fine_tune_epochs": 2, "optimizer.name": "adam", "optimizer.lr": 0.001, "optimizer.momentum": 0.0,
          "optimizer.fine_tune_lr": 1e-5, "augment.kind": "none", "augment.flip": True, "early_stopping.enabled": False,
          "early_stopping.patience": 3, "tracking_uri": "sqlite:////x/mlflow.db", "mlruns_dir": "/x", "parent_run_id": "abc",
          "export.model": True, "feature_cache.enabled": None, "feature_cache.engine": "xnnpack", "num_samples": 10}


def test_params_are_what_shaped_the_model_as_used():
    params = run_params(CONFIG)
    assert params == {"split.kind": "tutorial", "split.val_size": 12, "split.test_size": 0.1, "split.group_by": "none",
                      "backbone.trainable": False, "optimizer.name": "adam", "optimizer.lr": 0.001,
                      "augment.kind": "none", "early_stopping.enabled": False, "feature_cache.engine": "xnnpack"}
    assert str(params["split.val_size"]) == "12"  # a count, as typed
    turned_on = run_params(CONFIG | {"backbone.trainable": True, "optimizer.name": "sgd", "early_stopping.enabled": True})
    assert {"backbone.fine_tune_from", "optimizer.momentum", "optimizer.fine_tune_lr", "early_stopping.patience"} <= set(turned_on)
    assert run_params(CONFIG, keep=("num_samples", "backbone.fine_tune_from"))["num_samples"] == 10  # a swept key stays


@pytest.mark.parametrize("name, expected", [("dropout=0.2 lr=0.001", "dropout=0_2-lr=0_001"),
                                            ("mobilenet_v2 tutorial dropout=0.5 adam lr=0.001",
                                             "mobilenet_v2-tutorial-dropout=0_5-adam-lr=0_001")])
def test_a_model_is_named_after_its_run_once(name, expected):
    from rps.tracking.record import MODEL_NAME_LENGTH, model_name

    assert model_name(name) == expected
    assert len(model_name("x=1 " * 40)) == MODEL_NAME_LENGTH
