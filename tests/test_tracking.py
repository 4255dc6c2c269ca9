"""The reporter's writes to a real MLflow store (SQLite in a temp folder)."""

from __future__ import annotations

import mlflow
import pytest

from rps.tracking.reporter import MlflowReporter


@pytest.fixture
def run_id(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.MlflowClient().create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    return mlflow.MlflowClient().create_run(experiment).info.run_id


def test_a_dataset_another_job_inserted_at_the_same_moment_is_still_linked(run_id, tmp_path, monkeypatch):
    """Two sweep jobs log the same split at once: MLflow's lookup misses it in both, the second
    insert breaks the unique key. That run must still get its dataset, not fail."""
    real, calls = mlflow.MlflowClient.log_inputs, []

    def racing(self, run, datasets=None, models=None):
        calls.append(run)
        if len(calls) == 1:  # the other job's insert lands between MLflow's lookup and ours
            other = self.create_run(self.get_run(run).info.experiment_id).info.run_id
            real(self, other, datasets=datasets)
            raise mlflow.exceptions.MlflowException(
                "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest")
        return real(self, run, datasets=datasets, models=models)

    monkeypatch.setattr(mlflow.MlflowClient, "log_inputs", racing)
    MlflowReporter(run_id).dataset("train", "rps-train", str(tmp_path), "abc123", {"examples": 3})
    inputs = mlflow.MlflowClient().get_run(run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest, i.tags[0].value) for i in inputs] == [("rps-train", "abc123", "train")]
    assert len(calls) == 2


def test_other_store_errors_are_not_retried(run_id, tmp_path, monkeypatch):
    def refusing(self, run, datasets=None, models=None):
        raise mlflow.exceptions.MlflowException("Run is not active")

    monkeypatch.setattr(mlflow.MlflowClient, "log_inputs", refusing)
    with pytest.raises(mlflow.exceptions.MlflowException, match="not active"):
        MlflowReporter(run_id).dataset("train", "rps-train", str(tmp_path), "abc123", {"examples": 3})
