"""Choices are made on validation only: relabelling the test split changes none of them.

The best run of a table or a sweep, early stopping, and a run's objective (what Hydra's sweeper
receives) are all computed with the test split relabelled; only the reported test numbers move.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import compose, new_experiment, store
from rps.search.summary import choose_best, rank_key


def row(name, val, loss=None, epochs=None, test=None, status="FINISHED"):
    return {"run_name": name, "status": status, "selection_val_accuracy": val, "selection_val_loss": loss,
            "epochs_trained": epochs, "test_accuracy": test, "run_id": name}


def test_best_is_chosen_on_validation_with_the_documented_tie_breaks():
    table = [row("a", 0.90, 0.30, 5, 1.00), row("b", 0.95, 0.40, 5, 0.99), row("c", 0.95, 0.20, 6, 0.98),
             row("d", 0.95, 0.20, 4, 0.50), row("e", 0.95, 0.20, 4, 0.97), row("f", None, None, None, None, "FAILED"),
             row("g", 1.00, 0.01, 1, 1.00, "KILLED")]
    # highest val accuracy; then lower val loss; then fewer epochs; then the first started
    assert choose_best(table)["run_name"] == "d"
    assert [r["run_name"] for r in sorted(table, key=rank_key)][:5] == ["g", "d", "e", "c", "b"]
    assert choose_best([row("f", None, status="FAILED")]) is None


def test_shuffling_test_accuracies_never_changes_the_best():
    rng = np.random.default_rng(0)
    for _ in range(200):  # few distinct values, so ties are frequent and a test tie-break would show
        table = [row(str(i), float(rng.choice([0.9, 1.0])), float(rng.choice([0.1, 0.2])), int(rng.integers(1, 3)),
                     float(rng.random())) for i in range(6)]
        best = choose_best(table)["run_name"]
        for shuffled in rng.permuted(np.array([r["test_accuracy"] for r in table]), axis=0), np.zeros(6):
            relabelled = [r | {"test_accuracy": float(t)} for r, t in zip(table, shuffled)]
            assert choose_best(relabelled)["run_name"] == best


def _fake_sweep(cwd, children: list[tuple[str, float, float, int, float]]) -> str:
    """A sweep parent with finished children (name, val acc, val loss, epochs, test acc) in a real store."""
    from mlflow.entities import Metric, Param

    from rps import tracking

    client = store(cwd)
    experiment = new_experiment(cwd, "sweep")
    parent = tracking.open_parent_run(experiment, "sweep", {"sweep": "parent", "sweep.keys": "head.dropout"}, {})
    for i, (name, val, loss, epochs, test) in enumerate(children):
        run = client.create_run(experiment, run_name=name, tags={tracking.PARENT_TAG: parent}, start_time=1000 + i)
        values = {"selection_val_accuracy": val, "selection_val_loss": loss, "epochs_trained": epochs, "test_accuracy": test}
        client.log_batch(run.info.run_id, params=[Param("head.dropout", name)],
                         metrics=[Metric(k, v, 0, 0) for k, v in values.items()])
        client.set_terminated(run.info.run_id, "FINISHED")
    return parent


def test_the_sweep_summary_picks_its_best_job_on_validation(tmp_path):
    from rps.search.sweep import summarize

    children = [("0.2", 0.95, 0.30, 3, 1.00), ("0.5", 0.95, 0.10, 3, 0.60), ("0.8", 0.90, 0.05, 2, 0.99)]
    chosen = {}
    for name, tests in (("true", [c[4] for c in children]), ("relabelled", [0.99, 0.10, 1.00])):
        cwd = tmp_path / name
        cwd.mkdir()
        parent = _fake_sweep(cwd, [c[:4] + (t,) for c, t in zip(children, tests)])
        assert summarize(parent) == 0
        run = store(cwd).get_run(parent)
        chosen[name] = run.data.tags["best_run_name"]
        assert run.data.metrics["selection_val_accuracy"] == 0.95
        assert run.data.metrics["chosen_test_accuracy"] == tests[1]  # reported beside the choice
        assert "selection_val_loss (min)" in run.data.tags["best_chosen_by"]
    assert chosen == {"true": "0.5", "relabelled": "0.5"}


@pytest.mark.slow  # > 9 s: kept out of the fast tier (docs/testing.md)
def test_relabelling_the_test_split_changes_no_choice_of_a_run(tiny_tfds, relabelled_tfds, tiny_backbone, tmp_path):
    """Early stopping, the exported model and the returned objective; split=official, so the
    dataset's test split is exactly the run's test split."""
    from rps.runner import job

    seen = {}
    for name, data_dir in (("true", tiny_tfds), ("relabelled", relabelled_tfds)):
        cfg = compose(f"dataset.data_dir={data_dir}", f"backbone.handle={tiny_backbone}", "backbone.image_size=32",
                      "split=official", "split.val_size=12", "batch_size=16", "epochs=30", "optimizer.lr=0.03",
                      "early_stopping.enabled=true", "early_stopping.patience=4", "num_samples=0",
                      f"feature_cache.dir={tmp_path / 'cache'}", f"mlruns_dir={tmp_path / name / 'mlruns'}",
                      # explicit: MLflow exports the previous run's store as $MLFLOW_TRACKING_URI
                      f"tracking_uri=sqlite:///{tmp_path / name / 'mlruns' / 'mlflow.db'}")
        objective = job.run(cfg)  # what `python -m rps.run` hands to Hydra's sweeper
        client = store(tmp_path / name)
        (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
        curve = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "val_accuracy"), key=lambda m: m.step)]
        seen[name] = (objective, run.data.metrics, curve)
    (objective, true, curve), (objective_r, relabelled, curve_r) = seen["true"], seen["relabelled"]
    assert true["epochs_trained"] < 30, "early stopping stopped the run"
    assert objective == objective_r == true["selection_val_accuracy"] == relabelled["selection_val_accuracy"]
    for key in ("selection_val_loss", "epochs_trained"):
        assert true[key] == relabelled[key], key
    assert curve == curve_r
    assert true["test_accuracy"] >= 0.9 and relabelled["test_accuracy"] <= 0.1  # only the report moved
