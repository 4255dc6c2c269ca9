"""Multirun sweeps: a parent MLflow run, nested children, a summary, a leaderboard, the UI."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_SPLIT, clean_env, copy_store, free_port, run_cli, store, sweep_runs, wait_until_up
from support.commands import run_module

pytestmark = pytest.mark.slow
GRID = ["head.dropout=0.2,0.5", "optimizer.lr=0.01,0.001"]




@pytest.fixture(scope="module")
def grid_sweep(tiny_tfds, hub_cache, store_template, tmp_path_factory):
    """The grid's 4 jobs on joblib's 2 workers, the chosen one promoted to champion (Hydra's
    in-process basic launcher runs the sweeps of test_ensemble.py, test_ui.py, test_team_server.py)."""
    cwd = tmp_path_factory.mktemp("sweep")
    copy_store(store_template, cwd)
    env = clean_env()
    env.update(TFDS_DATA_DIR=str(tiny_tfds), TFHUB_CACHE_DIR=str(hub_cache))
    result = run_cli("-m", *GRID, "epochs=2", *TINY_SPLIT, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                     "champion.enabled=true", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd, result


def test_sweep_is_one_parent_with_named_nested_children(grid_sweep):
    cwd, _ = grid_sweep
    parent, children = sweep_runs(cwd)
    assert parent.info.status == "FINISHED"
    assert re.fullmatch(r"sweep \d{4}-\d\d-\d\d \d\d:\d\d head.dropout x optimizer.lr \(4\)", parent.info.run_name)
    assert parent.data.tags["command"].startswith(f"{os.path.basename(sys.executable)} -m rps.run -m ")
    assert parent.data.params["sweep.head.dropout"] == "0.2,0.5"
    assert parent.data.params["sweep.optimizer.lr"] == "0.01,0.001"
    assert parent.data.tags["sweep.keys"] == "head.dropout,optimizer.lr"
    names = sorted(c.info.run_name for c in children)
    assert names == ["dropout=0.2 lr=0.001", "dropout=0.2 lr=0.01", "dropout=0.5 lr=0.001", "dropout=0.5 lr=0.01"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id  # it came with the job's config
        assert "parent_run_id" not in child.data.params and "tracking_uri" not in child.data.params  # plumbing
        dropout, lr = (part.split("=")[1] for part in child.info.run_name.split())
        assert child.data.params["head.dropout"] == dropout and float(child.data.params["optimizer.lr"]) == float(lr)
        assert child.data.params["epochs"] == "2"


def test_summary_matches_the_children(grid_sweep, tmp_path):
    import mlflow

    cwd, result = grid_sweep
    parent, children = sweep_runs(cwd)
    local = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, dst_path=str(tmp_path))
    table = list(csv.DictReader(io.StringIO(open(f"{local}/summary/summary.csv").read())))
    by_id = {c.info.run_id: c for c in children}
    assert sorted(row["run_id"] for row in table) == sorted(by_id)
    for row in table:
        child = by_id[row["run_id"]]
        assert float(row["test_accuracy"]) == pytest.approx(child.data.metrics["test_accuracy"])
        assert float(row["selection_val_accuracy"]) == pytest.approx(child.data.metrics["selection_val_accuracy"])
        assert row["head.dropout"] == child.data.params["head.dropout"] and row["status"] == "FINISHED"
    with Image.open(f"{local}/summary/accuracy.png") as image:
        image.verify()
    in_start_order = sorted(children, key=lambda c: c.info.start_time)  # last tie-break: the first started
    best = min(in_start_order, key=lambda c: (-c.data.metrics["selection_val_accuracy"], c.data.metrics["selection_val_loss"],
                                              c.data.metrics["epochs_trained"]))  # validation only
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert parent.data.metrics["selection_val_accuracy"] == pytest.approx(best.data.metrics["selection_val_accuracy"])
    assert parent.data.metrics["chosen_test_accuracy"] == pytest.approx(best.data.metrics["test_accuracy"])
    assert parent.data.metrics["n_children"] == 4 and parent.data.metrics["n_failed"] == 0
    tests = [c.data.metrics["test_accuracy"] for c in children]  # a sweep over seeds is read by its mean
    assert parent.data.metrics["mean_test_accuracy"] == pytest.approx(sum(tests) / len(tests))
    assert parent.data.metrics["std_test_accuracy"] == pytest.approx(float(np.std(tests, ddof=1)))
    vals = [c.data.metrics["selection_val_accuracy"] for c in children]
    assert parent.data.metrics["mean_selection_val_accuracy"] == pytest.approx(sum(vals) / len(vals))
    assert "mean selection_val_accuracy" in open(f"{local}/summary/summary.md").read()
    assert "dropout=0.5 lr=0.01" in open(f"{local}/summary/summary.md").read()


def _board(out: str) -> tuple[dict[str, int], list[list[str]]]:
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")]
    return {name: i for i, name in enumerate(table[0])}, table[1:]


def test_compare_ranks_on_validation_and_reports_test_on_request(grid_sweep):
    cwd, _ = grid_sweep
    parent, children = sweep_runs(cwd)
    by_validation = sorted(sorted(children, key=lambda c: c.info.start_time), key=lambda c: (
        -c.data.metrics["selection_val_accuracy"], c.data.metrics["selection_val_loss"], c.data.metrics["epochs_trained"]))
    by_test = sorted(children, key=lambda c: -c.data.metrics["test_accuracy"])
    for args, expected in ((["--sweep", parent.info.run_id], by_validation), (["--experiment", "rps"], by_validation),
                           (["--sort", "test_accuracy"], by_test)):
        result = run_module("rps.compare", *args, cwd=cwd)
        assert result.returncode == 0, result.stderr[-2000:]
        out = result.stdout
        column, rows = _board(out)
        assert len(rows) == 4
        key = "selection_val_accuracy" if expected is by_validation else "test_accuracy"
        assert [f"{c.data.metrics[key]:.4f}" for c in expected] == [row[column[key]] for row in rows]
        if expected is by_validation:
            assert [row[column["run_id"]] for row in rows] == [c.info.run_id for c in expected]
        assert [row[column["rank"]] for row in rows] == ["1", "2", "3", "4"]
        assert ("reporting only" in out) == (expected is by_test)
        mean = sum(c.data.metrics["test_accuracy"] for c in children) / 4
        assert f"test_accuracy {mean:.4f}" in out and f"sweep {parent.info.run_id[:8]}: mean selection_val_accuracy" in out
    missing = run_module("rps.compare", "--experiment", "nope", cwd=cwd)
    assert missing.returncode == 2 and "no experiment 'nope'" in missing.stderr




def _api(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{base}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_mlflow_ui_serves_the_sweep(grid_sweep):
    cwd, _ = grid_sweep
    parent, children = sweep_runs(cwd)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no GenAI job workers
    try:
        wait_until_up(f"{base}/health", server)
        found = _api(base, "/api/2.0/mlflow/runs/search", {
            "experiment_ids": [parent.info.experiment_id],
            "filter": f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"})
        assert sorted(r["info"]["run_id"] for r in found["runs"]) == sorted(c.info.run_id for c in children)
        served_parent = _api(base, f"/api/2.0/mlflow/runs/get?run_id={parent.info.run_id}")["run"]
        assert served_parent["info"]["status"] == "FINISHED"
        served_child = _api(base, f"/api/2.0/mlflow/runs/get?run_id={children[0].info.run_id}")["run"]
        contexts = sorted(tag["value"] for i in served_child["inputs"]["dataset_inputs"] for tag in i["tags"])
        assert contexts == ["test", "training", "validation"]
        history = _api(base, f"/api/2.0/mlflow/metrics/get-history?run_id={children[0].info.run_id}&metric_key=val_accuracy")
        assert [m["step"] for m in history["metrics"]] == [1, 2]
        result = run_module("rps.compare", "--tracking-uri", base, "--sweep", parent.info.run_id, cwd=cwd)
        assert result.returncode == 0, result.stderr[-2000:]
        board = result.stdout
        assert all(c.info.run_id in board for c in children) and base in board
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_joblib_launcher_with_two_workers_loses_no_run(grid_sweep):
    cwd, _ = grid_sweep
    parent, children = sweep_runs(cwd)
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_children"] == 4
    assert parent.data.params["launcher"].endswith("JoblibLauncher")
    # champion.enabled: the parent promotes its chosen job, once (jobs never promote themselves)
    versions = store(cwd).search_model_versions("name = 'rps'")
    assert [v.run_id for v in versions] == [parent.data.tags["best_run_id"]]
    assert store(cwd).get_model_version_by_alias("rps", "champion").version == versions[0].version


def test_a_sweep_that_cannot_be_tracked_exits_non_zero(offline_env, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # a port nothing listens on
    result = run_cli("-m", "head.dropout=0.2,0.5", *TINY_SPLIT, f"tracking_uri={dead}", cwd=tmp_path, env=offline_env)
    assert result.returncode == 2 and "cannot start the sweep's MLflow run" in result.stderr
    assert "Epoch" not in result.stdout
