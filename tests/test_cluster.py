"""Sweeps through Hydra's cluster launchers: submitit (local executor) and a real local Ray head.

The jobs run in other processes (and, for Ray, another working directory) than the launching
one; they nest under the sweep's parent because its id travels inside each job's config. A job
that fails does so alone, and the sweep's summary says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import TINY_SPLIT, copy_store, free_port, run_cli, store, sweep_runs

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def test_submitit_local_runs_each_job_in_its_own_process_and_a_failing_one_fails_alone(offline_env, tmp_path):
    result = run_cli("-m", "head.dropout=0.2,1.5", "epochs=1", *TINY_SPLIT,
                     "hydra/launcher=submitit_local", cwd=tmp_path, env=offline_env, timeout=900)
    assert result.returncode == 1 and "1 sweep job(s) failed" in result.stderr, result.stderr[-3000:]
    parent, children = sweep_runs(tmp_path)
    status = {c.info.run_name: c.info.status for c in children}
    assert status == {"dropout=0.2": "FINISHED", "dropout=1.5": "FAILED"}
    assert parent.info.status == "FINISHED" and parent.data.params["launcher"].endswith("LocalLauncher")
    pids = {c.data.tags["rps.pid"] for c in children}  # the FAILED job's run carries its process too
    assert len(pids) == 2 and str(os.getpid()) not in pids, "each job ran in a process of its own"
    assert parent.data.tags["rps.pid"] not in pids, "no job ran in the launching process"
    assert all("head.dropout=1.5" in c.data.tags["error"] for c in children if c.info.status == "FAILED")
    assert parent.data.metrics["n_failed"] == 1  # the failed job fails alone: the summary says so
    summary = store(tmp_path).download_artifacts(parent.info.run_id, "summary/summary.md", str(tmp_path))
    assert "FAILED" in open(summary).read()


@pytest.fixture
def ray_head(offline_env, tmp_path):
    """A real Ray head on 127.0.0.1 (no dashboard, auth off: a throwaway test cluster), started
    from a folder of its own, so its workers run jobs in a directory the launcher never uses."""
    ray = shutil.which("ray", path=os.path.dirname(sys.executable))
    if ray is None:
        pytest.skip("Ray is not installed (pip install -e '.[cluster]'; the test extra includes it)")
    port, head_dir = free_port(), tmp_path / "ray-head"
    head_dir.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="rps-ray-", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    env = offline_env | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                         "RAY_USAGE_STATS_ENABLED": "0"}
    started = subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                              "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={ray_tmp}"],
                             cwd=head_dir, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield f"127.0.0.1:{port}", head_dir, env
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_ray_cluster_jobs_nest_under_the_parent_from_another_directory(ray_head, store_template, tmp_path):
    address, head_dir, env = ray_head
    launch = tmp_path / "launch"
    copy_store(store_template, launch)
    result = run_cli("-m", "head.dropout=0.2,0.5", "epochs=1", *TINY_SPLIT, "hydra/launcher=ray_cluster",
                     f"hydra.launcher.ray.init.address={address}", cwd=launch, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = sweep_runs(launch)
    assert sorted(c.info.run_name for c in children) == ["dropout=0.2", "dropout=0.5"]
    assert all(c.info.status == "FINISHED" for c in children) and parent.info.status == "FINISHED"
    assert parent.data.params["launcher"].endswith("RayLauncher")
    assert all(c.data.tags["rps.pid"] != str(os.getpid()) for c in children)
    assert not (head_dir / "mlruns").exists(), "jobs wrote to the launch folder's store, not the head's folder"


@pytest.mark.parametrize("overrides, params, expected", [
    (["head.dropout=0.2,0.5", "optimizer.lr=1e-2,1e-3,1e-4", "epochs=1"], {}, 6),
    (["+experiment=sweep_dropout_lr"], {"head.dropout": "0.2,0.5,0.8", "optimizer.lr": "1e-2,1e-3,1e-4"}, 9),
    (["seed=range(1,4)"], {}, 3),
])
def test_the_expected_number_of_jobs_is_known_before_they_run(overrides, params, expected):
    from omegaconf import OmegaConf

    from rps.search.sweep import expected_jobs

    config = OmegaConf.create({"hydra": {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                                                     "params": params}}})
    assert expected_jobs(config, overrides) == expected
    other = OmegaConf.create({"hydra": {"sweeper": {"_target_": "some.OptunaSweeper", "params": params}}})
    assert expected_jobs(other, overrides) is None


def test_jobs_that_never_reached_the_store_are_counted_missing_and_fail_the_sweep(tmp_path):
    from mlflow.entities import Metric

    from conftest import new_experiment
    from rps import tracking
    from rps.search.sweep import summarize

    client = store(tmp_path)
    experiment = new_experiment(tmp_path, "rps")
    parent = tracking.open_parent_run(experiment, "sweep", {"sweep": "parent", "sweep.keys": "seed",
                                                            "sweep.expected_jobs": "3"}, {})
    run = client.create_run(experiment, run_name="seed=1", tags={tracking.PARENT_TAG: parent})
    client.log_batch(run.info.run_id, metrics=[Metric("best_val_accuracy", 0.9, 0, 0)])
    client.set_terminated(run.info.run_id, "FINISHED")
    assert summarize(parent) == 2  # one finished, two never reported
    done = client.get_run(parent)
    assert done.data.metrics["n_missing"] == 2 and done.data.metrics["n_children"] == 1
    summary = client.download_artifacts(parent, "summary/summary.md", str(tmp_path))
    assert "2 of 3 jobs never reported to the tracking store" in open(summary).read()


def test_the_launcher_presets_compose_with_the_plugins():
    from conftest import compose

    slurm = compose("hydra/launcher=slurm", return_hydra_config=True).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    assert (slurm.timeout_min, slurm.cpus_per_task, slurm.mem_gb, slurm.partition) == (60, 4, 8, None)
    ray = compose("hydra/launcher=ray_cluster", "hydra.launcher.ray.init.address=10.0.0.1:6379",
                  return_hydra_config=True).hydra.launcher
    assert ray._target_.endswith("RayLauncher") and ray.ray.init.object_store_memory is None
    assert ray.ray.init.address == "10.0.0.1:6379" and ray.ray.remote.num_cpus == 2
