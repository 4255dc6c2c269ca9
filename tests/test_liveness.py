"""Runs whose process died are found and marked FAILED; live runs, here or elsewhere, are left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import TINY_SPLIT, all_runs, store
from support.commands import run_module, start_module
from rps.tracking import runs as liveness


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """One tracking store for the tests that only need one (a new store costs ~2 s of migrations):
    each test works in an experiment of its own."""
    return tmp_path_factory.mktemp("store")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_owner_rule():
    mine = liveness.owner_tags()
    assert liveness.owner_gone(mine) is None, "this process is alive"
    gone = liveness.owner_gone(mine | {liveness.PID: str(_dead_pid())})
    assert gone and "is gone" in gone
    reused = liveness.owner_gone(mine | {liveness.PROCESS_START: "1"})  # same pid, another process's start time
    assert reused and "another process" in reused
    assert "restarted" in liveness.owner_gone(mine | {liveness.BOOT_ID: "an-earlier-boot"})
    elsewhere = mine | {liveness.HOST: "node-17.cluster"}
    assert liveness.owner_gone(elsewhere) is None, "another host with a fresh heartbeat: may be alive"
    old = time.time() - liveness.STALE_AFTER_SECONDS - 60
    stale = liveness.owner_gone(elsewhere | {liveness.HEARTBEAT: str(int(old))})
    assert stale and "no heartbeat" in stale and "node-17.cluster" in stale


def test_reaping_marks_only_dead_runs_failed(shared_store):
    client = store(shared_store)
    experiment = client.create_experiment("reaping")
    old = str(int(time.time() - liveness.STALE_AFTER_SECONDS - 60))
    cases = {
        "alive here": liveness.owner_tags(),
        "dead here": liveness.owner_tags() | {liveness.PID: str(_dead_pid())},
        "alive elsewhere": liveness.owner_tags() | {liveness.HOST: "node-17"},
        "silent elsewhere": liveness.owner_tags() | {liveness.HOST: "node-17", liveness.HEARTBEAT: old},
        "not an rps run": {},
    }
    ids = {name: client.create_run(experiment, run_name=name, tags=tags).info.run_id for name, tags in cases.items()}
    reaped = liveness.reap_stale_runs([experiment], client)
    assert sorted(reaped) == sorted([ids["dead here"], ids["silent elsewhere"]])
    for name, run_id in ids.items():
        run = client.get_run(run_id)
        assert run.info.status == ("FAILED" if run_id in reaped else "RUNNING"), name
        if run_id in reaped:
            assert run.data.tags[liveness.REAPED] in run.data.tags["error"]


def test_heartbeat_renews_its_tag(shared_store):
    client = store(shared_store)
    run = client.create_run(client.create_experiment("heartbeat"), tags={liveness.HEARTBEAT: "0"})
    with liveness.Heartbeat(run.info.run_id, interval=0.2):
        time.sleep(1.0)
    beat = float(client.get_run(run.info.run_id).data.tags[liveness.HEARTBEAT])
    assert time.time() - 5 < beat <= time.time()


@pytest.mark.slow
def test_a_killed_run_is_reaped_by_the_next_command_and_a_live_one_is_not(offline_env, tmp_path):
    proc = start_module("rps.run", "epochs=100000", *TINY_SPLIT, cwd=tmp_path, env=offline_env)
    try:
        deadline = time.monotonic() + 240
        while not (all_runs(tmp_path) and store(tmp_path).get_metric_history(all_runs(tmp_path)[0].info.run_id,
                                                                             "val_accuracy")):
            assert time.monotonic() < deadline and proc.poll() is None, "training never started"
            time.sleep(1)

        def compare():
            out = run_module("rps.compare", cwd=tmp_path, env=offline_env, timeout=120)
            assert out.returncode == 0, out.stderr[-2000:]
            (run,) = all_runs(tmp_path)
            return run

        assert compare().info.status == "RUNNING", "a live run is never touched"
        proc.send_signal(signal.SIGKILL)  # no handler runs: the run stays RUNNING in the store
        proc.wait(timeout=30)
        assert all_runs(tmp_path)[0].info.status == "RUNNING"
        run = compare()
    finally:
        proc.kill()
    assert run.info.status == "FAILED"
    assert f"its process {proc.pid} on {os.uname().nodename} is gone" in run.data.tags[liveness.REAPED]


def test_a_ctrl_c_inside_a_store_write_still_ends_the_run_killed(shared_store):
    """As in a CI run: Ctrl-C landed just as SQLite returned the first row of a read inside a
    metrics write. The cursor, alive in the traceback, kept its connection and the write's lock
    open, so marking the run KILLED waited out MLflow's 20 s busy timeout three times, failed, and
    left the run RUNNING."""
    from sqlalchemy import event
    from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

    from rps.tracking.runs import tracked_run

    client = store(shared_store)
    experiment = client.create_experiment("interrupted")
    interrupted = []

    def interrupt_inside_the_write(cursor, statement, parameters, context):
        """Runs the read of the latest metrics that follows the insert, then Ctrl-C, as a signal
        arriving during it is raised when the call returns."""
        if statement.startswith("SELECT latest_metrics"):
            cursor.execute(statement, parameters)
            interrupted.append(statement)
            raise KeyboardInterrupt
        return False  # SQLAlchemy runs it

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with tracked_run(experiment, "interrupted", {}) as report:
            report.epoch({"val_accuracy": 0.5}, 0)  # the second write's read finds this row
            event.listen(SQLiteDialect_pysqlite, "do_execute", interrupt_inside_the_write)
            try:
                report.epoch({"val_accuracy": 0.6}, 1)
            finally:
                event.remove(SQLiteDialect_pysqlite, "do_execute", interrupt_inside_the_write)
    assert interrupted, "the write was interrupted"
    (run,) = client.search_runs([experiment])
    assert run.info.status == "KILLED"
    assert time.monotonic() - start < 15
