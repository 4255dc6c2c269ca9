"""A run killed at any moment resumes into the same MLflow run with the numbers an uninterrupted
run has (`python -m rps.run resume=<run id>`), from checkpoints that are verified and removed."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import TINY_SPLIT, all_runs, copy_store, new_experiment, run_cli, store
from support.commands import run_module, start_module

TESTS = Path(__file__).parent  # support.sweep_job (and the conftest it imports) from there

pytestmark = pytest.mark.slow

FROZEN = ["epochs=60", *TINY_SPLIT, "head.dropout=0.5", "early_stopping.enabled=true", "early_stopping.patience=100"]
FINE_TUNE = ["epochs=2", "backbone.trainable=true", "backbone.fine_tune_epochs=12", "optimizer.fine_tune_lr=0.01",
             *TINY_SPLIT]


def _checkpointed_epoch(cwd: Path) -> tuple[str, int, int]:
    """(run id, epoch, phase) of the newest checkpoint under ``cwd``'s store, or ("", 0, 0)."""
    for current in (cwd / "mlruns" / "checkpoints").glob("*/current"):
        try:
            name = current.read_text().split()[0]
            state = json.loads((current.parent / name / "state.json").read_text())
            return current.parent.name, state["epoch"], state["phase"]
        except (OSError, ValueError):
            pass
    return "", 0, 0


def _kill_after(args: list[str], cwd: Path, env: dict, epoch: int, phase: int, module: str = "rps.run",
                path: tuple[Path, ...] = ()) -> str:
    """Start ``python -m module args`` (importing also from ``path``), SIGKILL it once a checkpoint
    of ``phase`` at ``epoch`` or later exists; returns its run id."""
    proc = start_module(module, *args, cwd=cwd, env=env, path=path)
    deadline = time.monotonic() + 300
    try:
        while True:
            run_id, done, at = _checkpointed_epoch(cwd)
            if at == phase and done >= epoch:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                return run_id
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"no checkpoint of phase {phase} epoch {epoch} (exit {proc.poll()}): "
                            f"{proc.communicate()[1][-3000:]}")
            time.sleep(0.05)
    finally:
        proc.kill()


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.parametrize("overrides, epoch, phase", [(FROZEN, 15, 1), (FINE_TUNE, 8, 2)], ids=["frozen", "fine-tune"])
def test_a_killed_run_resumes_to_the_numbers_of_an_uninterrupted_one(offline_env, store_template, tmp_path, overrides,
                                                                     epoch, phase):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    copy_store(store_template, whole), copy_store(store_template, killed)
    reference = run_cli(*overrides, cwd=whole, env=offline_env)
    assert reference.returncode == 0, reference.stderr[-3000:]
    (expected,) = all_runs(whole)

    run_id = _kill_after(overrides, killed, offline_env, epoch, phase)
    resumed = run_cli(f"resume={run_id}", cwd=killed, env=offline_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (run,) = all_runs(killed)
    assert run.info.run_id == run_id and run.info.status == "FINISHED" and run.data.tags["rps.resumed"] == "1"
    for key in ("selection_val_accuracy", "selection_val_loss", "epochs_trained", "test_accuracy", "test_loss"):
        assert run.data.metrics[key] == expected.data.metrics[key], key  # bit-exact on this machine
    client = store(killed)
    for key in ("val_accuracy", "train_loss"):  # continuous, no step twice, the same values
        assert _history(client, run_id, key) == _history(store(whole), expected.info.run_id, key), key
    assert not (killed / "mlruns" / "checkpoints" / run_id).exists(), "a finished run's checkpoints are removed"


def test_resume_refuses_other_values_and_a_damaged_checkpoint(offline_env, tmp_path):
    run_id = _kill_after(FROZEN, tmp_path, offline_env, 3, 1)
    changed = run_cli(f"resume={run_id}", "head.dropout=0.1", cwd=tmp_path, env=offline_env)
    assert changed.returncode == 2 and "drop head.dropout=0.1" in changed.stderr, changed.stderr[-2000:]
    folder = tmp_path / "mlruns" / "checkpoints" / run_id
    current = folder / (folder / "current").read_text().split()[0]
    (current / "state.json").write_text((current / "state.json").read_text().replace('"epoch": ', '"epoch": 1'))
    damaged = run_cli(f"resume={run_id}", cwd=tmp_path, env=offline_env)
    assert damaged.returncode == 2 and "is damaged" in damaged.stderr and "Traceback" not in damaged.stderr, \
        damaged.stderr[-2000:]
    assert str(folder) in damaged.stderr
    assert os.stat(folder).st_mode & 0o077 == 0, "checkpoints are the user's own"


def test_a_sweep_job_launched_again_resumes_its_own_run(offline_env, tmp_path):
    """What a SLURM requeue does: the same job of the same sweep (same parent, same overrides) runs
    again; it finds its unfinished run by its job key and resumes it instead of starting over."""
    from rps import tracking

    client = store(tmp_path)
    parent = tracking.open_parent_run(new_experiment(tmp_path, "rps"), "sweep", {"sweep": "parent", "sweep.keys": "seed"}, {})
    overrides = ["seed=3", *FROZEN, f"parent_run_id={parent}", f"mlruns_dir={tmp_path / 'mlruns'}",
                 f"tracking_uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"]
    first = _kill_after(overrides, tmp_path, offline_env, 10, 1, module="support.sweep_job", path=(TESTS,))
    again = run_module("support.sweep_job", *overrides, cwd=tmp_path, env=offline_env, path=[TESTS])
    assert again.returncode == 0, again.stderr[-3000:]
    children = tracking.child_runs(parent, client)
    assert [c.info.run_id for c in children] == [first] and children[0].info.status == "FINISHED"
    assert children[0].data.tags["rps.resumed"] == "1" and children[0].data.tags["rps.job_key"]
    steps = [m.step for m in client.get_metric_history(first, "val_accuracy")]
    assert steps == list(range(1, 61)), "every epoch once"
