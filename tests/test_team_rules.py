"""The team server's rules as plain functions (in-process, fast): artifact path spellings, what a
request names, owner stamping, Basic credentials, the password rule. tests/test_team_server.py
checks the same rules end to end on a real server."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest

from rps.team import artifact_paths
from rps.team.accounts import password_problem
from rps.team.guard import basic_credentials, stamp_owner
from rps.team.ownership import named, request_document

RUN = "0123456789abcdef0123456789abcdef"


def _encoded(text: str, times: int) -> str:
    for _ in range(times):
        text = quote(text, safe="")
    return text


@pytest.mark.parametrize("spelling", [
    f"1/{RUN}/artifacts/a.txt", f"./1/{RUN}/artifacts/a.txt", f"%2e/1/{RUN}/artifacts/a.txt",
    f"%2E%2F1%2F{RUN}/artifacts/a.txt", f"%252e%252f1/{RUN}/artifacts/a.txt", f"1/./{RUN}//artifacts/a.txt",
    f"/1/{RUN}/artifacts/a.txt", f"1/x/../{RUN}/artifacts/a.txt", f"1/x/%2e%2e/{RUN}/artifacts/./a.txt",
])
def test_every_spelling_of_an_artifact_path_has_one_plain_form(spelling):
    assert artifact_paths.canonical(spelling) == f"1/{RUN}/artifacts/a.txt"
    assert artifact_paths.owner_of_path(artifact_paths.canonical(spelling)) == ("run", "1", RUN)


@pytest.mark.parametrize("spelling", ["../1/x", "1/../../x", "1\\x", "1/%5Cx", "1/a%00b", "1/a#b", "file:/etc/passwd",
                                      "1/" + _encoded("a/b", times=11)])
def test_artifact_paths_without_a_safe_plain_form_are_refused(spelling):
    with pytest.raises(artifact_paths.BadArtifactPath):
        artifact_paths.canonical(spelling)


def test_requests_are_rewritten_to_the_plain_route_and_query():
    path, raw, query = artifact_paths.rewrite("/ajax-api/2.0/mlflow-artifacts/artifacts/.%2F1/x", "path=.%2F1%2Fx&a=b")
    assert (path, raw, query) == ("/ajax-api/2.0/mlflow-artifacts/artifacts/1/x",
                                  b"/ajax-api/2.0/mlflow-artifacts/artifacts/1/x", "path=1%2Fx&a=b")
    assert artifact_paths.rewrite("/api/2.0/mlflow-artifacts/artifacts", "")[0] == "/api/2.0/mlflow-artifacts/artifacts"
    for odd in ("/api/2.0//mlflow-artifacts/artifacts/1/x", "/api/2.0/mlflow-artifacts/elsewhere/1/x"):
        assert artifact_paths.mentions_artifact_routes(odd)
        with pytest.raises(artifact_paths.BadArtifactPath):
            artifact_paths.rewrite(odd, "")
    with pytest.raises(artifact_paths.BadArtifactPath):
        artifact_paths.rewrite("/api/2.0/mlflow-artifacts/artifacts", "path=1&path=./2")


def test_what_an_artifact_path_belongs_to():
    assert artifact_paths.owner_of_path("3/models/m-abc/artifacts/code/rps/x.py") == ("model", "3", "m-abc")
    assert artifact_paths.owner_of_path("3/traces/tr-1/artifacts/traces.json") == ("trace", "3", "tr-1")
    for elsewhere in ("3", "3/", f"3/{RUN}", f"3/{RUN}/other/x", "3/notarun/artifacts/x", "x/y/artifacts/z"):
        assert artifact_paths.owner_of_path(elsewhere) is None


def test_every_run_model_and_key_a_request_names_is_found():
    body = {"runId": "r1", "metrics": [{"key": "acc", "model_id": "m1"}], "models": [{"modelId": "m2"}],
            "tags": [{"key": "rps.model_uri", "value": "models:/m9"}]}
    document = request_document({"run_uuid": ["r2"]}, {}, json.dumps(body))  # double-encoded, as old clients send
    runs, models, keys = named(document, "/api/2.0/mlflow/logged-models/m3/tags/rps.owner")
    assert runs == {"r1", "r2"} and models == {"m1", "m2", "m3"} and keys == {"acc", "rps.model_uri", "rps.owner"}


def test_the_owner_is_stamped_over_whatever_the_client_claims():
    claimed = json.dumps({"experiment_id": "1", "userId": "alice", "tags": [{"key": "mlflow.user", "value": "alice"},
                                                                           {"key": "x", "value": "y"}]})
    stamped = json.loads(stamp_owner(json.dumps(claimed).encode(), "bob", "mlflow.user", True))
    assert stamped["user_id"] == "bob" and "userId" not in stamped
    assert stamped["tags"] == [{"key": "x", "value": "y"}, {"key": "mlflow.user", "value": "bob"}]
    assert stamp_owner(b"[1, 2]", "bob", "rps.owner", False) is None
    assert stamp_owner(b'{"tags": "no"}', "bob", "rps.owner", False) is None


def test_only_well_formed_basic_credentials_are_read():
    token = base64.b64encode(b"alice:pa:ss").decode()
    assert basic_credentials(f"Basic {token}".encode()) == ("alice", "pa:ss")
    for header in ("Bearer abc", 'Digest username="a"', "Basic", "Basic !!!", f"Basic {token} extra",
                   "Basic " + base64.b64encode(b"no-colon").decode(), "Basic " + base64.b64encode(b":pw").decode()):
        assert basic_credentials(header.encode()) is None, header


@pytest.mark.parametrize("password, problem", [
    ("Sh0rt-pass", "12 characters"), ("aaaaaaaaaaaa", "8 different"), ("abcdabcdabcd", "8 different"),
    ("My-Alice-pw-2026", "user name"), ("password1234", "published"), ("t7#Kq9!mZp2@", None)])
def test_the_password_rule(password, problem):
    found = password_problem("alice", password)
    assert (found is None) if problem is None else (problem in found)


def test_a_path_encoded_too_often_to_read_is_refused_not_passed():
    path = "/api/2.0/" + _encoded("mlflow-artifacts/artifacts/1/x", times=11)
    assert artifact_paths.mentions_artifact_routes(path)
    with pytest.raises(artifact_paths.BadArtifactPath):
        artifact_paths.rewrite(path, "")


def test_every_mlflow_validator_of_a_run_or_model_change_is_guarded():
    """The owner rule is keyed on the names of MLflow's validators: a renamed or new one must fail here."""
    import re

    import mlflow.server.auth as auth

    from rps.team.ownership import GUARDED

    validators = [*auth.BEFORE_REQUEST_VALIDATORS.values(), *auth.LOGGED_MODEL_BEFORE_REQUEST_VALIDATORS.values()]
    names = {getattr(v, "__name__", "") for v in validators}
    changes = {n for n in names if re.search(r"run|logged_model|log_", n) and not re.search(r"_(read|search)_", n)}
    stamped = {"validate_can_create_run", "validate_can_create_promptlab_run"}  # owner set by rps.team.guard
    assert changes - stamped <= GUARDED, changes - stamped - GUARDED
    assert [n for n in GUARDED if not hasattr(auth, n)] == []
    for name in ("_find_validator", "is_unprotected_route", "store", "create_app", "make_basic_auth_response"):
        assert hasattr(auth, name), name
