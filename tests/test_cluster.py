"""Sweeps through Hydra's cluster launchers: submitit (local executor) and a real local Ray head.

The jobs run in other processes (and, for Ray, another working directory) than the launching
one; they nest under the sweep's parent because its id travels inside each job's config.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_SPLIT, all_runs, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def sweep_runs(cwd: Path):
    runs = all_runs(cwd)
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(runs) == 1 + len(children)
    return parents[0], children


def test_submitit_local_runs_each_job_in_its_own_process(offline_env, tmp_path):
    result = run_cli("-m", "head.dropout=0.2,1.5", "optimizer.lr=0.01,0.001", "epochs=1", *TINY_SPLIT,
                     "hydra/launcher=submitit_local", cwd=tmp_path, env=offline_env, timeout=900)
    assert result.returncode == 1 and "2 sweep job(s) failed" in result.stderr, result.stderr[-3000:]
    parent, children = sweep_runs(tmp_path)
    status = {c.info.run_name: c.info.status for c in children}
    assert status == {"dropout=0.2 lr=0.01": "FINISHED", "dropout=0.2 lr=0.001": "FINISHED",
                      "dropout=1.5 lr=0.01": "FAILED", "dropout=1.5 lr=0.001": "FAILED"}
    assert parent.info.status == "FINISHED" and parent.data.params["launcher"].endswith("LocalLauncher")
    pids = {c.data.tags["rps.pid"] for c in children if c.info.status == "FINISHED"}
    assert len(pids) == 2 and str(os.getpid()) not in pids, "each job ran in a process of its own"
    assert all("head.dropout=1.5" in c.data.tags["error"] for c in children if c.info.status == "FAILED")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(offline_env, tmp_path):
    """A real Ray head on 127.0.0.1 (no dashboard, auth off: a throwaway test cluster), started
    from a folder of its own, so its workers run jobs in a directory the launcher never uses."""
    ray = shutil.which("ray", path=os.path.dirname(sys.executable))
    if ray is None:
        pytest.skip("Ray is not installed (pip install -e '.[cluster]'; the test extra includes it)")
    port, head_dir = _free_port(), tmp_path / "ray-head"
    head_dir.mkdir()
    env = offline_env | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                         "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(tmp_path / "ray-tmp")}
    started = subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                              "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={tmp_path / 'ray-tmp'}"],
                             cwd=head_dir, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield f"127.0.0.1:{port}", head_dir, env
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_ray_cluster_jobs_nest_under_the_parent_from_another_directory(ray_head, tmp_path):
    address, head_dir, env = ray_head
    launch = tmp_path / "launch"
    launch.mkdir()
    result = run_cli("-m", "head.dropout=0.2,0.5", "epochs=1", *TINY_SPLIT, "hydra/launcher=ray_cluster",
                     f"hydra.launcher.ray.init.address={address}", cwd=launch, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = sweep_runs(launch)
    assert sorted(c.info.run_name for c in children) == ["dropout=0.2", "dropout=0.5"]
    assert all(c.info.status == "FINISHED" for c in children) and parent.info.status == "FINISHED"
    assert parent.data.params["launcher"].endswith("RayLauncher")
    assert all(c.data.tags["rps.pid"] != str(os.getpid()) for c in children)
    assert not (head_dir / "mlruns").exists(), "jobs wrote to the launch folder's store, not the head's folder"
