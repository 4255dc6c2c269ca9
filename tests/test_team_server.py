"""rps against a team's tracking server: `python -m rps.server` (a real `mlflow server` on a real
PostgreSQL, proxied artifacts, basic-auth sign-in), on 127.0.0.1 only. CI starts PostgreSQL."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from mlflow.exceptions import MlflowException

from conftest import TINY_SPLIT, clean_env, free_port, run_cli
from support.commands import run_module, start_module
from support.services import require
from support.team import PASSWORDS, TeamServer, postgres_problem, strong_password, together

pytestmark = [pytest.mark.slow, pytest.mark.server]


@pytest.fixture(scope="module")
def team_server(tmp_path_factory):
    require("postgresql", postgres_problem)
    port = free_port()
    state = tmp_path_factory.mktemp("server")  # exists already, mode 0755: start must make it private
    server = TeamServer(f"http://127.0.0.1:{port}", state,
                        ["--state-dir", str(state), "--port", str(port), "--db-name", f"rps_test_{uuid.uuid4().hex[:8]}",
                         "--app", os.environ.get("RPS_TEST_SERVER_APP", "rps-auth")])  # basic-auth: upstream check
    started = server.cli("start", user=None, env_extra={"MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORDS["admin"]})
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        for user in ("alice", "bob"):
            added = server.cli("add-user", user, env_extra={"RPS_NEW_USER_PASSWORD": PASSWORDS[user]})
            assert added.returncode == 0, added.stderr[-2000:]
        for user in ("carol", "dave"):
            server.users().create_user(user, PASSWORDS[user])
        server.client("alice").create_experiment("private")
        assert server.cli("grant", "bob", "private", "DENY").returncode == 0
        yield server
    finally:
        server.cli("destroy")


@dataclass
class AliceRun:
    cwd: Path
    env: dict
    result: object
    run: object


@pytest.fixture(scope="module")
def alice(team_server, tiny_tfds, hub_cache, tmp_path_factory) -> AliceRun:
    """A real tiny rps run of alice's (experiment 'rps', its model registered as team-tiny), where
    bob is then granted EDIT: the first test builds on it, the owner tests attack it."""
    env = clean_env()
    env |= {"TFDS_DATA_DIR": str(tiny_tfds), "TFHUB_CACHE_DIR": str(hub_cache), "PYTHONUNBUFFERED": "1",
            "MLFLOW_TRACKING_URI": team_server.url} | team_server.creds("alice")
    cwd = tmp_path_factory.mktemp("alice")
    result = run_cli("epochs=1", *TINY_SPLIT, "register_model=team-tiny", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert team_server.cli("grant", "bob", "rps", "EDIT").returncode == 0
    client = team_server.client("alice")
    (run,) = client.search_runs([client.get_experiment_by_name("rps").experiment_id])
    return AliceRun(cwd, env, result, run)


@pytest.fixture
def as_alice(team_server, offline_env):
    return offline_env | {"MLFLOW_TRACKING_URI": team_server.url} | team_server.creds("alice")


def _files_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def test_parallel_sweeps_lose_no_run_and_registry_predict_and_compare_work_against_the_server(team_server, alice):
    """Two sweeps at once into one new experiment (the first with two joblib jobs at once) beside
    alice's single run: 2 parents + 4 jobs, all FINISHED, their files on the server only."""
    import mlflow

    from rps.synthetic import tiny_image

    single, tmp_path, as_alice = alice.result, alice.cwd, alice.env
    first = start_module("rps.run", "-m", "head.dropout=0.1,0.2", "epochs=1", *TINY_SPLIT, "experiment_name=load",
                         "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", cwd=tmp_path, env=as_alice)
    second = start_module("rps.run", "-m", "optimizer.lr=0.01,0.001", "epochs=1", *TINY_SPLIT, "experiment_name=load",
                          cwd=tmp_path, env=as_alice)
    sweeps = [p.communicate(timeout=900) for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], [err[-2000:] for _, err in sweeps]
    photo = tmp_path / "hand.png"
    from PIL import Image
    import numpy as np
    Image.fromarray(tiny_image(1, np.random.default_rng(0))).save(photo)
    predicted = run_module("rps.predict", "models:/team-tiny/1", str(photo), cwd=tmp_path, env=as_alice, timeout=300)
    assert predicted.returncode == 0 and "hand.png" in predicted.stdout, predicted.stderr[-2000:]
    board = run_module("rps.compare", "--experiment", "load", cwd=tmp_path, env=as_alice, timeout=300)
    assert board.returncode == 0 and board.stdout.count("| FINISHED |") == 4, board.stdout + board.stderr  # the jobs

    client = team_server.client("alice")
    swept = client.search_runs([client.get_experiment_by_name("load").experiment_id])
    parents = {r.info.run_id: r for r in swept if r.data.tags.get("sweep") == "parent"}
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents.values())
    by_parent = {pid: sorted(r.info.run_name for r in swept if r.data.tags.get("mlflow.parentRunId") == pid)
                 for pid in parents}
    assert sorted(by_parent.values()) == [["dropout=0.1", "dropout=0.2"], ["lr=0.001", "lr=0.01"]]
    assert all(r.info.status == "FINISHED" for r in swept) and len(swept) == 6
    runs = [*swept, client.get_run(alice.run.info.run_id)]  # and the single run, in experiment rps
    for run in runs:  # proxied: the files are on the server, none in the client's folder
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        on_server = team_server.state / "artifacts" / run.info.experiment_id / run.info.run_id / "artifacts"
        expected = "summary/summary.md" if run.info.run_id in parents else "plots/confusion_matrix.png"
        assert (on_server / expected).is_file()
    assert not (tmp_path / "mlruns" / "mlflow.db").exists() and not (tmp_path / "mlruns" / "artifacts").exists()
    assert mlflow.MlflowClient().get_model_version("team-tiny", "1").run_id in {r.info.run_id for r in runs}

    password = PASSWORDS["alice"]  # never in what the runs recorded, nor in what was printed
    for run in runs:
        assert not any(password in str(v) for v in list(run.data.params.values()) + list(run.data.tags.values()))
    job = next(r for r in swept if r.info.run_name == "dropout=0.1")
    config = client.download_artifacts(job.info.run_id, "config", str(tmp_path / "downloaded"))
    assert "dropout" in _files_text(Path(config)) and password not in _files_text(Path(config))
    assert password not in _files_text(tmp_path / "mlruns" / "hydra")
    for out, err in [*sweeps, *((r.stdout, r.stderr) for r in (single, predicted, board))]:
        assert password not in out + err


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


# --------------------------------------------------------------------------- owners (rps.team.ownership)


def _artifact_url(server: TeamServer, path: str, api: str = "api") -> str:
    return f"{server.url}/{api}/2.0/mlflow-artifacts/artifacts/{path}"


def test_bob_cannot_overwrite_the_files_of_alices_logged_model_or_run_even_with_edit(team_server, alice):
    run = alice.run
    model_id = run.data.tags["rps.model_uri"].removeprefix("models:/")
    model_root = f"{run.info.experiment_id}/models/{model_id}/artifacts"
    targets = [f"{model_root}/mlflow_model.py",  # models from code: this file runs when the model loads
               f"{model_root}/code/rps/__init__.py",
               f"{run.info.experiment_id}/{run.info.run_id}/artifacts/config/config.yaml"]
    before = {path: (team_server.state / "artifacts" / path).read_bytes() for path in targets}
    bob, owner = ("bob", PASSWORDS["bob"]), ("alice", PASSWORDS["alice"])
    for path in targets:
        for api in ("api", "ajax-api"):
            put = requests.put(_artifact_url(team_server, path, api), data=b"import os  # bob was here\n", auth=bob)
            assert put.status_code == 403, (path, put.status_code, put.text)
        deleted = requests.delete(_artifact_url(team_server, path), auth=bob)
        assert deleted.status_code == 403, (path, deleted.status_code)
    assert {path: (team_server.state / "artifacts" / path).read_bytes() for path in targets} == before
    assert requests.put(_artifact_url(team_server, targets[1]), data=before[targets[1]], auth=owner).status_code == 200


def test_bob_cannot_rewrite_the_tags_of_alices_run_but_alice_can(team_server, alice):
    run_id = alice.run.info.run_id
    bob = team_server.client("bob")
    for tag in ("rps.model_uri", "rps.model_manifest_sha256"):
        with pytest.raises(MlflowException) as refused:
            bob.set_tag(run_id, tag, "models:/m-of-bobs")
        assert refused.value.error_code == "PERMISSION_DENIED" and "alice" in str(refused.value)
    with pytest.raises(MlflowException):
        bob.delete_tag(run_id, "rps.model_uri")
    owner = team_server.client("alice")
    owner.set_tag(run_id, "rps.model_manifest_sha256", "0" * 64)
    tags = owner.get_run(run_id).data.tags
    assert tags["rps.model_uri"] == alice.run.data.tags["rps.model_uri"] and tags["rps.model_manifest_sha256"] == "0" * 64
    with pytest.raises(MlflowException, match="set by the server"):  # nobody but an admin rewrites the owner
        owner.set_tag(run_id, "mlflow.user", "bob")


def test_bob_cannot_log_into_or_end_alices_run_but_alice_can(team_server, alice):
    run_id = alice.run.info.run_id
    bob = team_server.client("bob")
    for write in (lambda: bob.log_metric(run_id, "val_accuracy", 1.0), lambda: bob.log_param(run_id, "lr", "9"),
                  lambda: bob.set_terminated(run_id, "FAILED"), lambda: bob.delete_run(run_id)):
        with pytest.raises(MlflowException) as refused:
            write()
        assert refused.value.error_code == "PERMISSION_DENIED"
    owner = team_server.client("alice")
    owner.log_metric(run_id, "checked_by_alice", 1.0)
    run = owner.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["checked_by_alice"] == 1.0
    assert run.data.metrics["val_accuracy"] == alice.run.data.metrics["val_accuracy"]


def test_runs_and_models_belong_to_whoever_signed_in_whatever_the_client_claims(team_server, alice):
    experiment_id, bob = alice.run.info.experiment_id, ("bob", PASSWORDS["bob"])
    claimed = {"experiment_id": experiment_id, "user_id": "alice", "tags": [{"key": "mlflow.user", "value": "alice"}]}
    created = requests.post(f"{team_server.url}/api/2.0/mlflow/runs/create", json=claimed, auth=bob)
    assert created.status_code == 200, created.text
    run = team_server.client("bob").get_run(created.json()["run"]["info"]["run_id"])
    assert run.info.user_id == "bob" and run.data.tags["mlflow.user"] == "bob"
    model = requests.post(f"{team_server.url}/api/2.0/mlflow/logged-models", auth=bob, json={
        "experiment_id": experiment_id, "tags": [{"key": "rps.owner", "value": "alice"}]})
    assert model.status_code == 200 and {"key": "rps.owner", "value": "bob"} in model.json()["model"]["info"]["tags"]
    on_alices_run = requests.post(f"{team_server.url}/api/2.0/mlflow/logged-models", auth=bob, json={
        "experiment_id": experiment_id, "source_run_id": alice.run.info.run_id})
    assert on_alices_run.status_code == 403, on_alices_run.text
    assert alice.run.info.user_id == "alice"
    into_alices = requests.post(f"{team_server.url}/api/2.0/mlflow/experiments/create", auth=bob, json={
        "name": "bobs-window", "artifact_location": f"mlflow-artifacts:/{experiment_id}"})
    assert into_alices.status_code == 403, into_alices.text  # its runs' artifacts would be alice's files


def test_the_reaper_skips_other_users_dead_runs_quietly(team_server, alice, caplog):
    from rps.tracking import runs

    dead = subprocess.Popen(["true"])
    dead.wait()
    experiment_id = alice.run.info.experiment_id
    lost = team_server.client("alice").create_run(experiment_id, tags=runs.owner_tags() | {runs.PID: str(dead.pid)})
    caplog.set_level("DEBUG", logger="rps.tracking.runs")
    assert runs.reap_stale_runs([experiment_id], client=team_server.client("bob")) == []
    assert [r.levelname for r in caplog.records if lost.info.run_id in r.getMessage()] == ["DEBUG"]
    assert team_server.client("alice").get_run(lost.info.run_id).info.status == "RUNNING"
    assert runs.reap_stale_runs([experiment_id], client=team_server.client("alice")) == [lost.info.run_id]
    assert team_server.client("alice").get_run(lost.info.run_id).info.status == "FAILED"


# --------------------------------------------------------------------------- artifact paths, sign-in


SPELLINGS = ["{e}/{rest}", "./{e}/{rest}", ".%2F{e}/{rest}", "%2e/{e}/{rest}", "%2E%2F{e}/{rest}",
             "%252e%252f{e}/{rest}", "%252E%252F{e}%252F{rest}", "{e}/./{rest}", "{e}/%2e/{rest}", "{e}//{rest}",
             "/{e}/{rest}", "%2F{e}/{rest}", "{e}/x/../{rest}", "{e}/x/%2e%2e/{rest}", "{e}%2F{rest}"]


def test_every_spelling_of_a_denied_artifact_path_gets_the_plain_paths_answer(team_server):
    owner = team_server.client("alice")
    experiment_id = owner.get_experiment_by_name("private").experiment_id
    run = owner.create_run(experiment_id)
    owner.log_text(run.info.run_id, "alice's secret", "secret.txt")
    rest = f"{run.info.run_id}/artifacts/secret.txt"
    answers = {}
    for spelling in SPELLINGS:
        path = spelling.format(e=experiment_id, rest=rest)
        for api in ("api", "ajax-api"):
            status, _, body = team_server.raw("GET", f"/{api}/2.0/mlflow-artifacts/artifacts/{path}", "bob")
            answers[(api, path)] = status
            assert b"secret" not in body
        folder = path.rsplit("/", 1)[0]
        status, _, body = team_server.raw("GET", f"/api/2.0/mlflow-artifacts/artifacts?path={folder}", "bob")
        answers[("list", folder)] = status
        assert b"secret.txt" not in body
    assert set(answers.values()) == {403}, {k: v for k, v in answers.items() if v != 403}
    for spelling in SPELLINGS[:3]:  # the owner's answer is the same for every spelling too
        status, _, body = team_server.raw("GET", "/api/2.0/mlflow-artifacts/artifacts/" + spelling.format(
            e=experiment_id, rest=rest), "alice")
        assert (status, body) == (200, b"alice's secret")
    for refused in (f"{experiment_id}\\{rest}", f"../{experiment_id}/{rest}", f"{experiment_id}/%00/{rest}"):
        assert team_server.raw("GET", f"/api/2.0/mlflow-artifacts/artifacts/{refused}", "bob")[0] == 400


def _log_tail(server: TeamServer, start: int) -> str:
    with open(server.state / "server.log", "rb") as log:
        log.seek(start)
        return log.read().decode(errors="replace")


def test_unsupported_authorization_schemes_get_401_and_leave_no_traceback(team_server):
    start = (team_server.state / "server.log").stat().st_size
    for header in ("Bearer eyJhbGciOiJIUzI1NiJ9.e30.x", 'Digest username="alice", realm="mlflow", nonce="1"',
                   "Basic not-base64!", "Negotiate abc"):
        for path in ("/api/2.0/mlflow/experiments/search?max_results=1", "/api/2.0/mlflow/runs/get?run_id=x",
                     "/api/2.0/mlflow-artifacts/artifacts/0/x/artifacts/y"):
            status, headers, _ = team_server.raw("GET", path, headers={"Authorization": header})
            assert status == 401 and headers.get("www-authenticate", "").startswith("Basic"), (header, path, status)
    time.sleep(0.5)
    assert "Traceback" not in _log_tail(team_server, start)


def test_repeated_wrong_passwords_get_429_per_user_and_per_address(team_server):
    path = "/api/2.0/mlflow/experiments/get?experiment_id=0"
    guesses = [team_server.raw("GET", path, "carol", f"guess-{i}", source="127.0.0.2")[:2] for i in range(11)]
    assert [status for status, _ in guesses] == [401] * 10 + [429]
    assert 0 < int(guesses[-1][1]["retry-after"]) <= 300
    assert team_server.raw("GET", path, "carol", source="127.0.0.3")[0] == 429, "carol's account is locked"
    assert team_server.raw("GET", path, "alice", source="127.0.0.3")[0] == 200, "other users are not"
    from_one_address = [team_server.raw("GET", path, f"user{i}", "guess", source="127.0.0.4")[0] for i in range(31)]
    assert from_one_address == [401] * 30 + [429]


def test_a_password_change_or_deletion_takes_effect_at_once_in_every_worker(team_server):
    def statuses(password: str, source: str = "127.0.0.1", rounds: int = 1) -> set[int]:
        """Rounds of 8 requests at once: the kernel hands concurrent connections to both workers."""
        return {status for _ in range(rounds) for status in together(
            lambda: team_server.raw("GET", path, "dave", password, source=source)[0], 8)}

    path, old = "/api/2.0/mlflow/experiments/get?experiment_id=0", PASSWORDS["dave"]
    assert statuses(old, rounds=5) == {200}  # every worker has checked, and cached, the old password
    PASSWORDS["dave"] = strong_password("dave")
    team_server.users().update_user_password("dave", PASSWORDS["dave"])
    assert statuses(PASSWORDS["dave"], rounds=2) == {200}
    refused = statuses(old, source="127.0.0.5", rounds=4)
    assert 200 not in refused and 401 in refused  # (429 once dave's failures reach the limit)
    team_server.users().delete_user("dave")
    assert 200 not in statuses(PASSWORDS["dave"], source="127.0.0.5", rounds=2)


def test_weak_passwords_are_refused_by_the_cli_and_by_the_server(team_server):
    for password in ("abcabcabcabc", f"Erin-{PASSWORDS['carol']}"):
        added = team_server.cli("add-user", "erin", env_extra={"RPS_NEW_USER_PASSWORD": password})
        assert added.returncode == 2 and "A password" in added.stderr and "Traceback" not in added.stderr
    admin = ("admin", PASSWORDS["admin"])
    direct = requests.post(f"{team_server.url}/api/2.0/mlflow/users/create", auth=admin,
                           json={"username": "erin", "password": "aaaaaaaaaaaa"})
    assert direct.status_code == 400 and "different characters" in direct.text
    change = requests.patch(f"{team_server.url}/api/2.0/mlflow/users/update-password", auth=admin,
                            json={"username": "alice", "password": "Xy7-Alice-Qw9z"})
    assert change.status_code == 400 and "user name" in change.text
    assert team_server.raw("GET", "/api/2.0/mlflow/experiments/get?experiment_id=0", "alice")[0] == 200
    with pytest.raises(MlflowException):
        team_server.users().get_user("erin")


def test_grant_on_a_misspelt_experiment_names_close_ones_and_creates_nothing(team_server):
    client = team_server.client("admin")
    before = sorted(e.name for e in client.search_experiments())
    granted = team_server.cli("grant", "bob", "privat", "EDIT")
    assert granted.returncode == 2 and "Traceback" not in granted.stderr, granted.stderr
    assert "'privat'" in granted.stderr and "private" in granted.stderr.split("Close names:")[1]
    assert sorted(e.name for e in client.search_experiments()) == before


def test_the_state_folder_and_all_in_it_is_private_and_the_server_never_holds_the_admin_password(
        team_server, alice):
    from rps.team.processes import marked

    assert (team_server.state.stat().st_mode & 0o777) == 0o700
    modes = {p.relative_to(team_server.state): p.stat().st_mode & 0o777 for p in team_server.state.rglob("*")}
    assert {Path("basic_auth.ini"), Path("server.log"), Path("server.pid"), Path("pgpass")} <= set(modes)
    assert any(str(p).startswith("artifacts/") for p in modes), "the server's own files are there too"
    wrong = {p: oct(m) for p, m in modes.items() if m != (0o700 if (team_server.state / p).is_dir() else 0o600)}
    assert not wrong
    pids = marked(team_server.state)
    assert len(pids) >= 3  # mlflow server, uvicorn, its workers
    for pid in pids:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert PASSWORDS["admin"].encode() not in environ and b"MLFLOW_AUTH_ADMIN_PASSWORD" not in environ


# --------------------------------------------------------------------------- processes (last: they kill the server)


def test_a_server_whose_main_process_died_is_reported_refused_and_stopped(team_server):
    from rps.team.processes import marked, port_taken

    experiment_id = team_server.client("alice").create_experiment("alices-own")
    with pytest.raises(MlflowException):  # default READ: bob may not write here
        team_server.client("bob").create_run(experiment_id)
    os.kill(team_server.pid(), signal.SIGKILL)
    time.sleep(1)
    orphans = marked(team_server.state)
    assert orphans and requests.get(f"{team_server.url}/health", timeout=5).ok, "its workers still serve"
    status = team_server.cli("status")
    assert status.returncode == 3 and "BROKEN" in status.stdout and str(orphans[0]) in status.stdout
    refused = team_server.cli("start", "--default-permission", "EDIT", user=None)
    assert refused.returncode == 2 and f"holding port {team_server.port}" in refused.stderr, refused.stderr
    assert "uvicorn" in refused.stderr and "Traceback" not in refused.stderr
    stopped = team_server.cli("stop")
    assert stopped.returncode == 0 and not marked(team_server.state) and not port_taken("127.0.0.1", team_server.port)
    assert team_server.cli("status").returncode == 1
    restarted = team_server.cli("start", "--default-permission", "EDIT", user=None)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    team_server.client("bob").create_run(experiment_id)  # the new default permission took effect


def _kill(server: TeamServer) -> None:
    os.killpg(server.pid(), signal.SIGKILL)  # the server dies, all its processes at once


def _restart(server: TeamServer) -> None:
    restarted = server.cli("start", user=None)  # the server comes back
    assert restarted.returncode == 0, restarted.stderr[-2000:]


def _train_until_the_server_dies(server: TeamServer, cwd: Path, env: dict):
    """A long run of alice's whose server is killed once it logged two epochs; returns the lost run
    and what the run printed on stderr. Its own experiment, 'lost': the models there are its own."""
    client = server.client("alice")
    proc = start_module("rps.run", "epochs=100000", *TINY_SPLIT, "experiment_name=lost", cwd=cwd, env=env)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert time.monotonic() < deadline and proc.poll() is None, "training never started"
            time.sleep(2)
            experiment = client.get_experiment_by_name("lost")
            running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'") if experiment else []
            if running and len(client.get_metric_history(running[0].info.run_id, "val_accuracy")) >= 2:
                lost = running[0]
                break
        _kill(server)
        killed = time.monotonic()
        _, stderr = proc.communicate(timeout=300)
        stopped_after = time.monotonic() - killed
    finally:
        proc.kill()
    assert proc.returncode == 2 and stopped_after < 150, (stopped_after, stderr[-2000:])  # rps's default retries
    return lost, stderr


def _recover(folder: Path, cwd: Path, env: dict):
    return start_module("rps.recover", str(folder), cwd=cwd, env=env)


def _recover_until_the_server_dies_midway(server: TeamServer, folder: Path, cwd: Path, env: dict, lost) -> tuple:
    """rps.recover, stopped as soon as its run exists (it is uploading) while the server is killed."""
    client = server.client("alice")
    midway = _recover(folder, cwd, env)
    deadline = time.monotonic() + 240
    while not client.search_runs([lost.info.experiment_id], f"tags.`rps.recovered_from` = '{lost.info.run_id}'"):
        assert time.monotonic() < deadline and midway.poll() is None, midway.communicate()[1][-2000:]
        time.sleep(0.05)
    midway.send_signal(signal.SIGSTOP)
    _kill(server)
    midway.send_signal(signal.SIGCONT)
    _, midway_err = midway.communicate(timeout=300)
    return midway, midway_err


def test_a_server_lost_mid_run_or_mid_recovery_loses_nothing_and_the_retry_leaves_one_run(team_server, as_alice, tmp_path):
    """The run keeps what it trained; rps.recover refuses a kept model whose files changed, keeps the
    folder while the server is down or dies mid-upload (one message for both), and once the server
    is back leaves one run. One lost run for all of it, on this server's restarts (last: it kills it)."""
    from mlflow.entities import ViewType

    lost, stderr = _train_until_the_server_dies(team_server, tmp_path, as_alice)
    assert "python -m rps.recover" in stderr and "Traceback" not in stderr
    folder = Path(stderr.split("python -m rps.recover ")[-1].split()[0])
    assert (folder / "record.json").is_file() and (folder / "model" / "saved_model" / "saved_model.pb").is_file()
    assert (folder / "artifacts" / "config" / "config.yaml").is_file()

    # The server is down. No retries from here on: a dead server is noticed at once.
    at_once = as_alice | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    copy = shutil.copytree(folder, tmp_path / "copy")
    (copy / "model" / "saved_model" / "saved_model.pb").write_bytes(b"changed")
    _, err = _recover(copy, tmp_path, at_once).communicate(timeout=300)
    assert "changed: saved_model.pb" in err and "Traceback" not in err, err[-2000:]  # refused before anything is sent
    assert copy.is_dir() and folder.is_dir()
    down = _recover(folder, tmp_path, at_once)
    _, down_err = down.communicate(timeout=300)
    assert down.returncode == 2 and "does not answer" in down_err and "Traceback" not in down_err, down_err[-2000:]

    _restart(team_server)  # and it dies again in the middle of the upload
    midway, midway_err = _recover_until_the_server_dies_midway(team_server, folder, tmp_path, at_once, lost)
    assert midway.returncode == 2 and "Traceback" not in midway_err, midway_err[-2000:]
    same = [re.sub(r"\(\w+\)", "", text.strip().splitlines()[-1]) for text in (down_err, midway_err)]
    assert same[0] == same[1] and "Nothing is lost" in same[0] and "run the same command again" in same[0], same
    assert (folder / "record.json").is_file()

    _restart(team_server)  # back for good: the same command again
    recovered = run_module("rps.recover", str(folder), cwd=tmp_path, env=as_alice, timeout=300)
    assert recovered.returncode == 0, recovered.stderr[-2000:]
    assert not folder.exists()
    client, experiment, lost_run_id = team_server.client("alice"), lost.info.experiment_id, lost.info.run_id
    (new,) = client.search_runs([experiment], f"tags.`rps.recovered_from` = '{lost_run_id}'")
    deleted = client.search_runs([experiment], f"tags.`rps.recovered_from` = '{lost_run_id}'",
                                 run_view_type=ViewType.DELETED_ONLY)
    assert len(deleted) == 1 and deleted[0].info.run_id != new.info.run_id, "the half-written attempt was replaced"
    tags, history = new.data.tags, client.get_metric_history(new.info.run_id, "val_accuracy")
    assert new.info.status == "FINISHED" and tags["rps.partial"] == "true" and tags["rps.epochs_asked"] == "100000"
    assert int(tags["rps.epochs_done"]) == len(history) >= 2
    assert len(history) == new.data.metrics["epochs_trained"], "every finished epoch was kept"
    assert tags["rps.model_uri"].startswith("models:/") and len(tags["rps.model_manifest_sha256"]) == 64
    assert client.get_run(lost_run_id).info.status == "FAILED", "the lost run was reaped (its process is gone)"
    record = {m.model_id for m in client.search_logged_models([experiment])}
    assert record == {tags["rps.model_uri"].split("/")[-1]}, "no model left from the replaced attempt"
