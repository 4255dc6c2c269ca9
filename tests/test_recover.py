"""rps.recover against a real tracking server (`mlflow server`, sqlite, proxied artifacts) that
dies: before the recovery, and in the middle of its upload."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_SPLIT, clean_env, free_port, wait_until_up
from support.commands import start_module

pytestmark = pytest.mark.slow


class Server:
    """`mlflow server` on one sqlite file and artifact folder, which can die and come back."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.url, self.process = f"http://127.0.0.1:{self.port}", None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"], cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        wait_until_up(f"{self.url}/health", self.process)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def runs_recovering(self, lost_run_id: str) -> list[str]:
        """Ids of runs tagged rps.recovered_from=<lost_run_id>, read from the server's database."""
        with sqlite3.connect(f"file:{self.root / 'mlflow.db'}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute("SELECT run_uuid FROM tags WHERE key = 'rps.recovered_from' AND value = ?", (lost_run_id,))
            return [row[0] for row in rows]


@pytest.fixture(scope="module")
def kept(tiny_tfds, hub_cache, tmp_path_factory):
    """A run that lost its server after two epochs, and the folder it kept."""
    import mlflow

    root = tmp_path_factory.mktemp("server")
    server, cwd = Server(root), tmp_path_factory.mktemp("client")
    env = clean_env()
    env.update(TFDS_DATA_DIR=str(tiny_tfds), TFHUB_CACHE_DIR=str(hub_cache), MLFLOW_TRACKING_URI=server.url,
               MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")  # a dead server is noticed at once
    server.start()
    proc = start_module("rps.run", "epochs=100000", *TINY_SPLIT, cwd=cwd, env=env)
    client = mlflow.MlflowClient(server.url)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert time.monotonic() < deadline and proc.poll() is None, "training never started"
            time.sleep(1)
            running = client.search_runs([e.experiment_id for e in client.search_experiments()])
            if running and len(client.get_metric_history(running[0].info.run_id, "val_accuracy")) >= 2:
                break
        server.kill()
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 2 and "python -m rps.recover" in stderr, stderr[-2000:]
    folder = Path(stderr.split("python -m rps.recover ")[-1].split()[0])
    return server, cwd, env, folder, running[0].info.run_id


def _recover(cwd: Path, env: dict, folder: Path):
    return start_module("rps.recover", str(folder), cwd=cwd, env=env)


def test_a_kept_model_whose_files_changed_is_refused_before_anything_is_sent(kept, tmp_path):
    server, cwd, env, folder, _ = kept
    copy = shutil.copytree(folder, tmp_path / "copy")
    (copy / "model" / "saved_model" / "saved_model.pb").write_bytes(b"changed")
    out, err = _recover(cwd, env, copy).communicate(timeout=300)
    assert "changed: saved_model.pb" in err and "Traceback" not in err, err[-2000:]
    assert copy.is_dir() and folder.is_dir()


def test_a_server_lost_before_or_during_recovery_loses_nothing_and_the_retry_leaves_one_run(kept):
    import mlflow
    from mlflow.entities import ViewType

    server, cwd, env, folder, lost_run_id = kept
    down = _recover(cwd, env, folder)
    _, down_err = down.communicate(timeout=300)
    assert down.returncode == 2 and "does not answer" in down_err and "Traceback" not in down_err, down_err[-2000:]

    server.start()
    midway = _recover(cwd, env, folder)
    deadline = time.monotonic() + 240
    while not server.runs_recovering(lost_run_id):  # its run exists: it is uploading
        assert time.monotonic() < deadline and midway.poll() is None, midway.communicate()[1][-2000:]
        time.sleep(0.05)
    midway.send_signal(signal.SIGSTOP)
    server.kill()
    midway.send_signal(signal.SIGCONT)
    _, midway_err = midway.communicate(timeout=300)
    assert midway.returncode == 2 and "Traceback" not in midway_err, midway_err[-2000:]
    same = [re.sub(r"\(\w+\)", "", text.strip().splitlines()[-1]) for text in (down_err, midway_err)]
    assert same[0] == same[1] and "Nothing is lost" in same[0] and "run the same command again" in same[0], same
    assert (folder / "record.json").is_file()

    server.start()
    again = _recover(cwd, env, folder)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    assert not folder.exists()
    client = mlflow.MlflowClient(server.url)
    experiment = client.get_run(lost_run_id).info.experiment_id
    (new,) = client.search_runs([experiment], f"tags.`rps.recovered_from` = '{lost_run_id}'")
    deleted = client.search_runs([experiment], f"tags.`rps.recovered_from` = '{lost_run_id}'",
                                 run_view_type=ViewType.DELETED_ONLY)
    assert len(deleted) == 1 and deleted[0].info.run_id != new.info.run_id, "the half-written attempt was replaced"
    tags, history = new.data.tags, client.get_metric_history(new.info.run_id, "val_accuracy")
    assert new.info.status == "FINISHED" and tags["rps.partial"] == "true" and tags["rps.epochs_asked"] == "100000"
    assert int(tags["rps.epochs_done"]) == len(history) >= 2
    assert tags["rps.model_uri"].startswith("models:/") and len(tags["rps.model_manifest_sha256"]) == 64
    assert client.get_run(lost_run_id).info.status == "FAILED", "the lost run was reaped"
    record = {m.model_id for m in client.search_logged_models([experiment])}
    assert record == {tags["rps.model_uri"].split("/")[-1]}, "no model left from the replaced attempt"
    server.kill()
