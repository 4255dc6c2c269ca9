"""rps against a team's tracking server: `python -m rps.server` (a real `mlflow server` on a real
PostgreSQL, proxied artifacts, basic-auth sign-in), on 127.0.0.1 only. CI starts PostgreSQL."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import TINY_SPLIT, free_port, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.server]
PASSWORDS = {name: f"{name}-{secrets.token_hex(8)}" for name in ("admin", "alice", "bob")}


@dataclass
class TeamServer:
    url: str
    state: Path
    args: list[str]

    def cli(self, *args: str, user: str = "admin", env_extra: dict | None = None) -> subprocess.CompletedProcess:
        env = os.environ | self.creds(user) | (env_extra or {})
        return subprocess.run([sys.executable, "-m", "rps.server", *args, *self.args], env=env,
                              capture_output=True, text=True, timeout=300)

    def creds(self, user: str | None) -> dict[str, str]:
        return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": PASSWORDS[user]} if user else {}

    def client(self, user: str = "admin"):
        import mlflow

        os.environ.update(self.creds(user))
        mlflow.set_tracking_uri(self.url)
        return mlflow.MlflowClient()


def _postgres_problem() -> str | None:
    if shutil.which("pg_isready") is None:
        return "PostgreSQL is not installed (CI installs it; locally: apt-get install postgresql)"
    if subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"]).returncode != 0:
        return "PostgreSQL is not running on 127.0.0.1:5432 (CI starts it; locally: pg_ctlcluster 15 main start)"
    return None




@pytest.fixture(scope="module")
def team_server(tmp_path_factory):
    problem = _postgres_problem()
    if problem:
        pytest.skip(problem)
    port = free_port()
    server = TeamServer(f"http://127.0.0.1:{port}", tmp_path_factory.mktemp("server"),
                        ["--state-dir", "", "--port", str(port), "--db-name", f"rps_test_{uuid.uuid4().hex[:8]}"])
    server.args[1] = str(server.state)
    started = server.cli("start", user=None, env_extra={"MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORDS["admin"]})
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        for user in ("alice", "bob"):
            added = server.cli("add-user", user, env_extra={"RPS_NEW_USER_PASSWORD": PASSWORDS[user]})
            assert added.returncode == 0, added.stderr[-2000:]
        assert server.cli("grant", "bob", "private", "DENY").returncode == 0
        yield server
    finally:
        server.cli("destroy")


@pytest.fixture
def as_alice(team_server, offline_env):
    return offline_env | {"MLFLOW_TRACKING_URI": team_server.url} | team_server.creds("alice")


def _files_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def test_runs_sweeps_registry_predict_and_compare_work_against_the_server(team_server, as_alice, tmp_path):
    import mlflow

    from rps.synthetic import tiny_image

    single = run_cli("epochs=1", *TINY_SPLIT, "register_model=team-tiny", cwd=tmp_path, env=as_alice)
    assert single.returncode == 0, single.stderr[-3000:]
    sweep = run_cli("-m", "head.dropout=0.2,0.5", "epochs=1", *TINY_SPLIT, cwd=tmp_path, env=as_alice)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    photo = tmp_path / "hand.png"
    from PIL import Image
    import numpy as np
    Image.fromarray(tiny_image(1, np.random.default_rng(0))).save(photo)
    predicted = subprocess.run([sys.executable, "-m", "rps.predict", "models:/team-tiny/1", str(photo)], cwd=tmp_path,
                               env=as_alice, capture_output=True, text=True, timeout=300)
    assert predicted.returncode == 0 and "hand.png" in predicted.stdout, predicted.stderr[-2000:]
    board = subprocess.run([sys.executable, "-m", "rps.compare"], cwd=tmp_path, env=as_alice, capture_output=True,
                           text=True, timeout=300)
    assert board.returncode == 0 and board.stdout.count("| FINISHED |") == 3, board.stdout + board.stderr

    client = team_server.client("alice")
    runs = client.search_runs([client.get_experiment_by_name("rps").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("sweep") == "parent")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(c.info.run_name for c in children) == ["dropout=0.2", "dropout=0.5"]
    assert all(r.info.status == "FINISHED" for r in runs) and len(runs) == 4
    for run in runs:  # proxied: the files are on the server, none in the client's folder
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        on_server = team_server.state / "artifacts" / run.info.experiment_id / run.info.run_id / "artifacts"
        assert (on_server / ("summary/summary.md" if run is parent else "plots/confusion_matrix.png")).is_file()
    assert not (tmp_path / "mlruns" / "mlflow.db").exists() and not (tmp_path / "mlruns" / "artifacts").exists()
    assert mlflow.MlflowClient().get_model_version("team-tiny", "1").run_id in {r.info.run_id for r in runs}

    password = PASSWORDS["alice"]  # never in what the runs recorded, nor in what was printed
    for run in runs:
        assert not any(password in str(v) for v in list(run.data.params.values()) + list(run.data.tags.values()))
    config = client.download_artifacts(children[0].info.run_id, "config", str(tmp_path / "downloaded"))
    assert "dropout" in _files_text(Path(config)) and password not in _files_text(Path(config))
    assert password not in _files_text(tmp_path / "mlruns" / "hydra")
    for result in (single, sweep, predicted, board):
        assert password not in result.stdout + result.stderr


@pytest.mark.parametrize("who", ["nobody", "wrong password", "no permission", "password in the URI"])
def test_sign_in_and_permission_failures_stop_before_training_naming_the_variables(team_server, as_alice, tmp_path, who):
    env = {k: v for k, v in as_alice.items() if not k.startswith("MLFLOW_TRACKING_")}
    args = [*TINY_SPLIT]
    if who == "wrong password":
        env |= team_server.creds("alice") | {"MLFLOW_TRACKING_PASSWORD": "not-" + PASSWORDS["alice"]}
    elif who == "no permission":
        env |= team_server.creds("bob")
        args.append("experiment_name=private")
    elif who == "password in the URI":
        env["MLFLOW_TRACKING_URI"] = team_server.url.replace("://", f"://alice:{PASSWORDS['alice']}@")
    env.setdefault("MLFLOW_TRACKING_URI", team_server.url)
    client = team_server.client("admin")
    before = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    result = run_cli(*args, cwd=tmp_path, env=env)
    assert result.returncode == 2 and result.seconds < 60 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "MLFLOW_TRACKING_USERNAME" in result.stderr and "MLFLOW_TRACKING_PASSWORD" in result.stderr
    expected = {"nobody": "without credentials", "wrong password": "as 'alice'", "no permission": "HTTP 403",
                "password in the URI": "carries credentials"}[who]
    assert expected in result.stderr
    assert "Epoch" not in result.stdout
    assert PASSWORDS["alice"] not in result.stdout + result.stderr
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == before, "no run left"


def test_a_server_lost_mid_run_costs_nothing_trained_and_the_run_is_recovered(team_server, as_alice, tmp_path):
    client = team_server.client("alice")
    proc = subprocess.Popen([sys.executable, "-m", "rps.run", "epochs=100000", *TINY_SPLIT], cwd=tmp_path,
                            env=as_alice, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert time.monotonic() < deadline and proc.poll() is None, "training never started"
            time.sleep(2)
            experiment = client.get_experiment_by_name("rps")
            running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'") if experiment else []
            if running and len(client.get_metric_history(running[0].info.run_id, "val_accuracy")) >= 2:
                lost = running[0]
                break
        os.killpg(int((team_server.state / "server.pid").read_text()), signal.SIGKILL)  # the server dies
        killed = time.monotonic()
        _, stderr = proc.communicate(timeout=300)
        stopped_after = time.monotonic() - killed
    finally:
        proc.kill()
    assert proc.returncode == 2 and stopped_after < 150, (stopped_after, stderr[-2000:])
    assert "python -m rps.recover" in stderr and "Traceback" not in stderr
    folder = Path(stderr.split("python -m rps.recover ")[-1].split()[0])
    assert (folder / "record.json").is_file() and (folder / "model" / "saved_model" / "saved_model.pb").is_file()
    assert (folder / "artifacts" / "config" / "config.yaml").is_file()

    restarted = team_server.cli("start", user=None)  # the server comes back
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    recovered = subprocess.run([sys.executable, "-m", "rps.recover", str(folder)], cwd=tmp_path, env=as_alice,
                               capture_output=True, text=True, timeout=300)
    assert recovered.returncode == 0, recovered.stderr[-2000:]
    assert not folder.exists()
    client = team_server.client("alice")
    (new,) = client.search_runs([lost.info.experiment_id], f"tags.`rps.recovered_from` = '{lost.info.run_id}'")
    assert new.info.status == "FINISHED" and new.data.metrics["epochs_trained"] >= 2
    history = client.get_metric_history(new.info.run_id, "val_accuracy")
    assert len(history) == new.data.metrics["epochs_trained"], "every finished epoch was kept"
    assert client.get_run(lost.info.run_id).info.status == "FAILED", "the lost run was reaped (its process is gone)"


def test_parallel_sweeps_against_one_server_lose_no_run(team_server, as_alice, tmp_path):
    first = subprocess.Popen([sys.executable, "-m", "rps.run", "-m", "head.dropout=0.1,0.2,0.3,0.4", "epochs=1",
                              *TINY_SPLIT, "experiment_name=load", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4"],
                             cwd=tmp_path, env=as_alice, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen([sys.executable, "-m", "rps.run", "-m", "optimizer.lr=0.01,0.001", "epochs=1",
                               *TINY_SPLIT, "experiment_name=load"],
                              cwd=tmp_path, env=as_alice, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    errors = [p.communicate(timeout=900)[1] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], [e[-2000:] for e in errors]
    client = team_server.client("alice")
    runs = client.search_runs([client.get_experiment_by_name("load").experiment_id])
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("sweep") == "parent"}
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents.values())
    by_parent = {pid: sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == pid) for pid in parents}
    assert sorted(by_parent.values()) == [["dropout=0.1", "dropout=0.2", "dropout=0.3", "dropout=0.4"],
                                          ["lr=0.001", "lr=0.01"]]
    assert all(r.info.status == "FINISHED" for r in runs) and len(runs) == 8
