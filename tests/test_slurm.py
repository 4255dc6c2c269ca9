"""Sweeps on a real SLURM cluster (a single node on this machine: .ci/slurm.sh starts it; skipped
with a reason where there is none): the slurm preset's sweep, and a job preempted mid-run
(`scontrol requeue`, then the USR2 signal SLURM sends before a time limit) is requeued, resumes from
its checkpoint and finishes into the same MLflow run."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from conftest import TINY_SPLIT, sweep_runs
from support.commands import start_module
from support.services import require

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=3",
         "hydra.launcher.timeout_min=20"]


def _slurm_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "no SLURM here (CI starts a single-node cluster with .ci/slurm.sh)"
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.split()
    return None if {"idle", "mixed", "allocated"} & set(states) else f"SLURM has no usable node ({states})"


@pytest.fixture(autouse=True)
def slurm():
    require("slurm", _slurm_problem)


def _checkpoint_epoch(cwd) -> int:
    for current in (cwd / "mlruns" / "checkpoints").glob("*/current"):
        try:
            return json.loads((current.parent / current.read_text().split()[0] / "state.json").read_text())["epoch"]
        except (OSError, ValueError, IndexError):
            pass
    return 0


def _wait(condition, proc, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the sweep ended before {what}: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _job_id() -> str:
    ids = subprocess.run(["squeue", "-h", "-o", "%i", "-t", "RUNNING"], capture_output=True, text=True).stdout.split()
    return ids[0] if len(ids) == 1 else ""


def test_a_preempted_slurm_job_is_requeued_and_resumes_its_run(offline_env, tmp_path):
    proc = start_module("rps.run", "-m", *SLURM, "seed=4", "epochs=120", *TINY_SPLIT, cwd=tmp_path, env=offline_env)
    try:
        for preempt in (["scontrol", "requeue"], ["scancel", "--signal=USR2"]):
            seen = _checkpoint_epoch(tmp_path)
            _wait(lambda: _job_id() and _checkpoint_epoch(tmp_path) >= seen + 5, proc, "a checkpoint")
            subprocess.run([*preempt, _job_id()], check=True, capture_output=True)
            _wait(lambda: _checkpoint_epoch(tmp_path) < seen + 5 or not _job_id(), proc, "the job to stop", 120)
        _, stderr = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    parent, (child,) = sweep_runs(tmp_path)
    assert parent.info.status == child.info.status == "FINISHED"
    assert int(child.data.tags["rps.resumed"]) >= 1, "the requeued job continued its run"
    from conftest import store

    steps = [m.step for m in store(tmp_path).get_metric_history(child.info.run_id, "val_accuracy")]
    assert steps == list(range(1, 121)), "every epoch once, none lost, none twice"
