"""Optuna studies with python -m rps.tune (tiny data): pruning, failing trials, validation-only
choices, several workers on one study, and resuming an interrupted study."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import all_runs, copy_store, store
from support.commands import run_module, start_module

pytestmark = pytest.mark.slow

# Random sampling with this seed (each trial draws from the seed and its number) gives, on the tiny
# data, a trial that fails (dropout >= 1 is out of range), trials that complete and one the median
# pruner stops after its first epoch: in 4 trials, FAIL (lr 0.05, dropout 1.09), COMPLETE (0.05, 0.46),
# COMPLETE (0.05, 0.38), PRUNED (1e-5, 0.26).
SEARCH = """# @package _global_
defaults:
  - override /split: official
experiment_name: tiny_search
epochs: 4
batch_size: 16
export:
  model: false
split:
  val_size: 12
search:
  study: tiny
  trials: 4
  sampler: random
  seed: 254
  startup_trials: 2
  warmup_epochs: 0
  space:
    lr: {key: optimizer.lr, type: categorical, choices: [0.05, 1.0e-5]}
    dropout: {key: head.dropout, type: float, low: 0.0, high: 1.2}
"""


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory) -> Path:
    extra = tmp_path_factory.mktemp("extra_conf")
    (extra / "experiment").mkdir()
    (extra / "experiment" / "tiny_search.yaml").write_text(SEARCH)
    return extra


def tune_command(search_dir: Path, *overrides: str) -> list[str]:
    return ["rps.tune", "+experiment=tiny_search", f"hydra.searchpath=[file://{search_dir}]", *overrides]


def run_tune(search_dir, cwd, env, *overrides) -> subprocess.CompletedProcess:
    return run_module(*tune_command(search_dir, *overrides), cwd=cwd, env=env, timeout=900)


def trials(cwd: Path, study: str = "tiny"):
    import optuna

    return optuna.load_study(study_name=study, storage=f"sqlite:///{cwd / 'mlruns' / 'optuna.db'}").get_trials()


def study_runs(cwd: Path):
    runs = all_runs(cwd)
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    return parents[0], [r for r in runs if r is not parents[0]]


def test_a_study_prunes_and_survives_failing_trials_choosing_on_validation_only(
        search_dir, offline_env, store_template, tmp_path, relabelled_tfds):
    seen, seen_output = {}, {}
    for name, data in (("true", None), ("relabelled", relabelled_tfds)):
        cwd = tmp_path / name
        copy_store(store_template, cwd)
        result = run_tune(search_dir, cwd, offline_env, *([f"dataset.data_dir={data}"] if data else []))
        assert result.returncode == 0, result.stderr[-3000:]
        seen[name] = (trials(cwd), *study_runs(cwd))
        seen_output[name] = result.stdout
    study, parent, children = seen["true"]
    states = [t.state.name for t in study]
    assert len(study) == 4 and {"COMPLETE", "PRUNED", "FAIL"} <= set(states), states
    by_number = {int(c.data.tags["optuna.trial_number"]): c for c in children}
    for trial in study:
        run = by_number[trial.number]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.run_name.startswith(f"lr={trial.params['lr']} dropout=")
        expected = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[trial.state.name]
        assert run.info.status == expected, (trial.number, run.info.status)
        if trial.state.name == "PRUNED":
            assert run.data.tags["trial_state"] == "PRUNED" and "pruned by Optuna" in run.data.tags["pruned_reason"]
            assert run.data.metrics["epochs_trained"] < 4, "a pruned trial stops early"
        if trial.state.name == "FAIL":
            assert "head.dropout" in run.data.tags["error"] and trial.params["dropout"] >= 1
        if trial.state.name == "COMPLETE":
            assert trial.value == pytest.approx(run.data.metrics["selection_val_accuracy"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_pruned"] == states.count("PRUNED")
    best = by_number[int(parent.data.tags["best_trial_number"])]
    assert parent.data.tags["best_run_id"] == best.info.run_id and best.info.status == "FINISHED"
    assert parent.data.metrics["chosen_test_accuracy"] == pytest.approx(best.data.metrics["test_accuracy"])
    client = store(tmp_path / "true")
    artifacts = {a.path for folder in ("study", "summary") for a in client.list_artifacts(parent.info.run_id, folder)}
    assert {"study/optimization_history.png", "study/param_importances.png", "study/parallel_coordinate.png",
            "summary/summary.md", "summary/summary.csv", "summary/comparison.png"} <= artifacts
    output = seen_output["true"]  # rps.tune ends saying what it chose, and how to get its model
    assert f"Chosen: {best.info.run_name} (run {best.info.run_id})" in output
    assert f"Rerun it alone, with its model: {best.data.tags['rps.rerun']}" in output
    assert "export.model=true" in best.data.tags["rps.rerun"]  # trials log no model: the rerun does

    relabelled, parent_r, children_r = seen["relabelled"]
    assert [(t.state.name, t.params, t.value) for t in relabelled] == [(t.state.name, t.params, t.value) for t in study]
    assert parent_r.data.tags["best_trial_number"] == parent.data.tags["best_trial_number"]
    tests = {int(c.data.tags["optuna.trial_number"]): c.data.metrics.get("test_accuracy") for c in children_r}
    assert tests[int(parent.data.tags["best_trial_number"])] != best.data.metrics["test_accuracy"], \
        "the test labels changed only what is reported"

    # Refit the choice on every training image (python -m rps.refit <parent>): it trains the same
    # model whatever the test labels, on the chosen run's training and validation images.
    refits = {}
    for name in ("true", "relabelled"):
        cwd, parent_id = tmp_path / name, seen[name][1].info.run_id
        result = run_module("rps.refit", parent_id, cwd=cwd, env=offline_env)
        assert result.returncode == 0, result.stderr[-3000:]
        client = store(cwd)
        after = client.get_run(parent_id)
        refit, chosen = client.get_run(after.data.tags["refit_run_id"]), client.get_run(after.data.tags["best_run_id"])
        assert refit.info.status == "FINISHED" and refit.data.tags["rps.refit_of"] == chosen.info.run_id
        assert refit.data.tags["rps.refit_parent"] == parent_id and refit.data.tags.get("mlflow.parentRunId") is None
        assert int(refit.data.params["data.n_train"]) == \
            int(chosen.data.params["data.n_train"]) + int(chosen.data.params["data.n_val"]), "validation trains too"
        assert refit.data.params["data.n_val"] == "0" and "selection_val_accuracy" not in refit.data.metrics
        assert refit.data.tags["rps.data.test_digest"] == chosen.data.tags["rps.data.test_digest"]
        assert {k: refit.data.params[k] for k in ("optimizer.lr", "head.dropout", "epochs")} == \
            {k: chosen.data.params[k] for k in ("optimizer.lr", "head.dropout", "epochs")}
        assert after.data.metrics["refit_test_accuracy"] == refit.data.metrics["test_accuracy"]
        assert f"runs:/{refit.info.run_id}" in result.stdout and refit.data.tags.get("rps.model_uri")
        refits[name] = ([m.value for m in client.get_metric_history(refit.info.run_id, "train_loss")],
                        refit.data.metrics["test_accuracy"])
    assert refits["true"][0] == refits["relabelled"][0], "the refit trains the same whatever the test labels"
    assert refits["true"][1] != refits["relabelled"][1], "the test labels changed only what is reported"


def test_two_workers_share_one_study_and_one_parent(search_dir, offline_env, tmp_path):
    procs = [start_module(*tune_command(search_dir, "search.pruner=none"), cwd=tmp_path, env=offline_env)
             for _ in range(2)]
    errors = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for e in errors]
    study = trials(tmp_path)
    numbers = [t.number for t in study]
    assert len(numbers) == len(set(numbers)) >= 4 and len(study) <= 5  # at most one over, in a photo finish
    parent, children = study_runs(tmp_path)
    assert sorted(int(c.data.tags["optuna.trial_number"]) for c in children) == sorted(numbers)
    assert {c.data.tags["rps.pid"] for c in children} == {str(p.pid) for p in procs}, "both workers ran trials"
    values = [tuple(sorted(t.params.items())) for t in study]
    assert len(set(values)) == len(values), f"each trial draws its own values, not the other worker's: {values}"
    assert parent.info.status == "FINISHED"


def in_a_trial_after_one_finished(runs) -> bool:
    """A trial's run FINISHED and a later one RUNNING (training: it has logged an epoch)."""
    trial_runs = [r for r in runs if "optuna.trial_number" in r.data.tags]
    return (sum(r.info.status == "FINISHED" for r in trial_runs) >= 1
            and any(r.info.status == "RUNNING" and "val_accuracy" in r.data.metrics for r in trial_runs))


def test_an_interrupted_study_resumes_where_it_stopped(search_dir, offline_env, tmp_path):
    # 3 trials: the first fails (dropout >= 1), the second finishes, the third is cut (the poll below sees
    # its first epochs; 20 leave room); the resumed study asks it again, the budget's third
    study_args = ("search.pruner=none", "epochs=20", "search.trials=3")
    proc = start_module(*tune_command(search_dir, *study_args), cwd=tmp_path, env=offline_env)
    try:
        deadline = time.monotonic() + 300
        while not in_a_trial_after_one_finished(all_runs(tmp_path)):
            assert time.monotonic() < deadline and proc.poll() is None, "no trial completed"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # Ctrl-C in the middle of the next trial (between trials: below)
        _, stderr = proc.communicate(timeout=120)
        (killed,) = [r for r in all_runs(tmp_path) if "optuna.trial_number" in r.data.tags and r.info.status == "KILLED"]
        killed_run_id = killed.info.run_id
        epochs_before = len(store(tmp_path).get_metric_history(killed_run_id, "val_accuracy"))
    finally:
        proc.kill()
    assert proc.returncode == 130 and "interrupted (Ctrl-C)" in stderr and "resume" in stderr, stderr[-2000:]
    parent, _ = study_runs(tmp_path)
    assert parent.info.status == "KILLED"
    done_before = [t.number for t in trials(tmp_path) if t.state.name == "COMPLETE"]
    resumed = run_tune(search_dir, tmp_path, offline_env, *study_args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study = trials(tmp_path)
    counted = [t for t in study if t.state.name != "FAIL" or not t.user_attrs.get("interrupted")]
    assert len(counted) == 3 and all(t.number in [s.number for s in study] for t in counted)
    assert set(done_before) <= {t.number for t in study if t.state.name == "COMPLETE"}, "finished trials were kept"
    assert any(t.user_attrs.get("interrupted") for t in study)
    parent, children = study_runs(tmp_path)
    by_number = {int(c.data.tags["optuna.trial_number"]): c for c in children}
    assert parent.info.status == "FINISHED" and {t.number for t in counted} <= set(by_number)
    (cut,) = [t for t in study if t.user_attrs.get("interrupted")]
    (again,) = [t for t in study if t.user_attrs.get("resumes_trial") == cut.number]
    assert again.params == cut.params and again.number > cut.number, "asked again, with the same values"
    (resumed_run,) = [c for c in children if c.data.tags.get("rps.resumed") == "1"]
    assert resumed_run.info.run_id == killed_run_id, "the run the Ctrl-C cut short continued"
    assert resumed_run.info.status == "FINISHED" and by_number[again.number] is resumed_run
    steps = [m.step for m in store(tmp_path).get_metric_history(killed_run_id, "val_accuracy")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > epochs_before, "every epoch once, continued"
    assert not [c for c in children if c.info.status == "KILLED" and c.data.tags.get("trial_state") != "PRUNED"]


@pytest.mark.parametrize("after", ["tell", "ask"])
def test_a_ctrl_c_between_trials_still_ends_the_study_run_killed(search_dir, offline_env, tmp_path, monkeypatch, after,
                                                                   rps_signal_handlers):
    """Ctrl-C arriving just after a trial was told (its run over, the next not asked) or just after
    the next trial was asked (no run started yet): the parent is KILLED, no trial is left RUNNING
    (it would hold a place in the budget forever), and a told trial keeps its state."""
    from hydra import compose, initialize_config_dir

    from conftest import ROOT
    from rps.search.study import Study

    for key in [k for k in os.environ if k not in offline_env]:  # e.g. the store an earlier test pointed MLflow at
        monkeypatch.delenv(key)
    for key, value in offline_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    overrides = ["+experiment=tiny_search", f"hydra.searchpath=[file://{search_dir}]", "search.pruner=none"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        study = Study(compose(config_name="tune", overrides=overrides), overrides, None)
        real, calls = getattr(study.study, after), []

        def then_ctrl_c(*args, **kwargs):  # Ctrl-C lands as the call returns
            result = real(*args, **kwargs)
            calls.append(after)
            if len(calls) == 2:  # the second ask or tell
                signal.raise_signal(signal.SIGINT)
            return result

        monkeypatch.setattr(study.study, after, then_ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            study.run()
    states = [t.state.name for t in trials(tmp_path)]
    assert "RUNNING" not in states and len(states) == 2, states
    interrupted = trials(tmp_path)[1].user_attrs.get("interrupted", False)
    assert interrupted == (after == "ask"), "a trial told before the signal keeps its state; one only asked fails"
    assert not interrupted or states[1] == "FAIL"
    parent, _ = study_runs(tmp_path)
    assert parent.info.status == "KILLED"
