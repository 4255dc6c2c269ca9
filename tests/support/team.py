"""Helpers for the tests of `python -m rps.server` (tests/test_team_server.py): the server under
test, its users, and HTTP requests sent exactly as written."""

from __future__ import annotations

import base64
import http.client
import os
import secrets
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from rps.team.accounts import password_problem
from support.commands import clean_env, run_module

USERS = ("admin", "alice", "bob", "carol", "dave")


def strong_password(user: str) -> str:
    while password_problem(user, password := secrets.token_urlsafe(16)):
        pass
    return password


PASSWORDS = {name: strong_password(name) for name in USERS}


@dataclass
class TeamServer:
    url: str
    state: Path
    args: list[str]

    def cli(self, *args: str, user: str | None = "admin", env_extra: dict | None = None) -> subprocess.CompletedProcess:
        env = clean_env() | self.creds(user) | (env_extra or {})
        return run_module("rps.server", *args, *self.args, cwd=os.getcwd(), env=env, timeout=300)

    def creds(self, user: str | None) -> dict[str, str]:
        return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": PASSWORDS[user]} if user else {}

    def client(self, user: str = "admin"):
        import mlflow

        os.environ.update(self.creds(user))
        mlflow.set_tracking_uri(self.url)
        return mlflow.MlflowClient()

    def users(self):
        from mlflow.server import get_app_client

        os.environ.update(self.creds("admin"))
        return get_app_client("basic-auth", tracking_uri=self.url)

    def pid(self) -> int:
        return int((self.state / "server.pid").read_text())

    @property
    def port(self) -> int:
        return urlsplit(self.url).port

    def raw(self, method: str, path: str, user: str | None = None, password: str | None = None,
            source: str = "127.0.0.1", headers: dict | None = None, body: bytes | None = None):
        """(status, headers, body) of one request whose path is sent byte for byte: requests (urllib3)
        would drop ``./`` and ``x/../`` segments before sending, hiding what a hostile client sends."""
        headers = dict(headers or {})
        if user:
            token = base64.b64encode(f"{user}:{password or PASSWORDS[user]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60, source_address=(source, 0))
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()


def together(call, count: int) -> list:
    """``count`` calls from 8 threads at once."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: call(), range(count)))


def postgres_problem() -> str | None:
    if shutil.which("pg_isready") is None:
        return "PostgreSQL is not installed (CI installs it; locally: apt-get install postgresql)"
    if subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"]).returncode != 0:
        return "PostgreSQL is not running on 127.0.0.1:5432 (CI starts it; locally: pg_ctlcluster 15 main start)"
    return None
