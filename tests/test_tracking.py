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


def _log_a_comparison_image_to_each(uri: str, runs: list[str], together, failures) -> None:
    """A process's share of the test below: each run's image, started with the other process's."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    mlflow.set_tracking_uri(uri)
    fig, errors = Figure(figsize=(1, 1)), []
    FigureCanvasAgg(fig)
    for run in runs:
        together.wait(timeout=120)
        try:
            MlflowReporter(run).figure(fig, "summary/comparison.png", compare_as="comparison")
        except Exception as err:  # noqa: BLE001  (counted, and shown by the test)
            errors.append(f"{type(err).__name__}: {str(err)[:300]}")
    failures.put(errors)


@pytest.mark.slow  # ~17 s: 60 images in two processes
def test_two_processes_logging_images_to_one_run_at_once_both_succeed(tmp_path):
    """A study's workers that end together both write its parent's summary images. MLflow marks a
    run's first image with a select-then-insert that two processes race on (IntegrityError in 6 of
    60 such pairs here, 2026-12-03, before the reporter set that mark through log_batch): 30 new
    runs, each written by two processes released at the same moment."""
    import multiprocessing

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    runs = [client.create_run(experiment).info.run_id for _ in range(30)]
    fork = multiprocessing.get_context("fork")
    together, failures = fork.Barrier(2), fork.Queue()
    writers = [fork.Process(target=_log_a_comparison_image_to_each, args=(uri, runs, together, failures))
               for _ in range(2)]
    for writer in writers:
        writer.start()
    errors = [error for _ in writers for error in failures.get(timeout=300)]
    for writer in writers:
        writer.join(timeout=60)
    assert errors == [] and [w.exitcode for w in writers] == [0, 0], errors
    for run in runs:
        images = [a.path for a in client.list_artifacts(run, "images")]
        assert len([p for p in images if p.endswith(".png")]) == 2, images  # both processes' images
        assert client.get_run(run).data.tags["mlflow.loggedImages"] == "True"
