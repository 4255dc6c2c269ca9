"""A team's MLflow tracking server, from MLflow's own parts: PostgreSQL store, proxied artifacts, sign-in.

    export MLFLOW_AUTH_ADMIN_PASSWORD='<12+ characters you choose>'   # or typed at the prompt
    python -m rps.server start                    # http://127.0.0.1:5000, state in mlruns/server/
    python -m rps.server add-user alice           # as the admin (MLFLOW_TRACKING_USERNAME/PASSWORD)
    python -m rps.server grant bob private-experiment DENY
    python -m rps.server status | stop | destroy

``start`` creates a PostgreSQL role and two databases if they are missing (the tracking store and
basic-auth's users, as the ``postgres`` superuser through ``psql``; the role's password is
generated and kept in ``<state>/pgpass``, mode 0600), runs ``mlflow db upgrade``, and starts
``mlflow server`` with ``--backend-store-uri postgresql+psycopg2://...``, ``--artifacts-destination
<state>/artifacts`` (clients get ``mlflow-artifacts:/`` URIs and need no storage credentials) and
``--app-name basic-auth`` (every request signs in; ``default_permission`` for signed-in users).
The admin password is never stored by rps: MLflow uses ``MLFLOW_AUTH_ADMIN_PASSWORD`` once, to
create the admin user on the first start. Nothing here serves requests itself.
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import rps  # noqa: F401
from rps.common.errors import ResourceError, RpsError

DEFAULT_PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")  # for every signed-in user
GRANTS = ("READ", "USE", "EDIT", "MANAGE", "DENY")  # for one user on one experiment
# MLflow's server package warns about a Starlette module it imports; not ours to fix.
warnings.filterwarnings("ignore", message="starlette.middleware.wsgi is deprecated")


def _postgres_sql(sql: str, admin_uri: str | None) -> str:
    """Run ``sql`` as a PostgreSQL superuser (``psql`` through the ``postgres`` OS user, or ``admin_uri``)."""
    if admin_uri:
        command = ["psql", admin_uri]
    elif os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", "psql"]
    else:
        command = ["sudo", "-n", "-u", "postgres", "psql"]
    if shutil.which(command[0]) is None:
        raise ResourceError(f"`{command[0]}` is not installed: install PostgreSQL's client (apt-get install postgresql).")
    out = subprocess.run([*command, "-X", "-q", "-t", "-v", "ON_ERROR_STOP=1"], input=sql, capture_output=True, text=True)
    if out.returncode != 0:
        raise ResourceError(
            f"PostgreSQL refused the set-up ({out.stderr.strip()[:300]}). Start PostgreSQL (e.g. `pg_ctlcluster "
            "15 main start`), and run this as root or as a user who may `sudo -u postgres`, or pass "
            "--pg-admin-uri postgresql://<superuser>@<host>/postgres."
        )
    return out.stdout


class Server:
    """The files of one server: ``<state>/`` holds its secrets (0600), config, artifacts, log and pid."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.state = args, Path(args.state_dir).expanduser().resolve()
        self.url = f"http://{args.host}:{args.port}"
        self.role, self.db, self.auth_db = args.db_name, args.db_name, f"{args.db_name}_auth"

    def uri(self, db: str) -> str:  # no password inside: libpq reads it from PGPASSFILE
        return f"postgresql+psycopg2://{self.role}@{self.args.pg_host}:{self.args.pg_port}/{db}"

    def secret(self, name: str, make) -> str:
        path = self.state / name
        if not path.is_file():
            path.write_text(make())
            path.chmod(0o600)
        return path.read_text().strip()

    def env(self) -> dict[str, str]:
        return os.environ | {"PGPASSFILE": str(self.state / "pgpass"),
                             "MLFLOW_AUTH_CONFIG_PATH": str(self.state / "basic_auth.ini"),
                             "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret("flask_secret", lambda: secrets.token_hex(32)),
                             "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # GenAI job workers: not needed

    def create_database(self) -> None:
        password = self.secret("pg_password", lambda: secrets.token_urlsafe(24))
        (self.state / "pgpass").write_text(f"{self.args.pg_host}:{self.args.pg_port}:*:{self.role}:{password}\n")
        (self.state / "pgpass").chmod(0o600)
        sql = [f"""DO $$ BEGIN
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{self.role}')
              THEN CREATE ROLE {self.role} LOGIN PASSWORD '{password}';
              ELSE ALTER ROLE {self.role} LOGIN PASSWORD '{password}'; END IF; END $$;"""]
        sql += [f"SELECT 'CREATE DATABASE {db} OWNER {self.role}' WHERE NOT EXISTS "
                f"(SELECT FROM pg_database WHERE datname = '{db}')\\gexec" for db in (self.db, self.auth_db)]
        _postgres_sql("\n".join(sql) + "\n", self.args.pg_admin_uri)

    def write_auth_config(self) -> None:
        (self.state / "basic_auth.ini").write_text(
            "[mlflow]\n"
            f"default_permission = {self.args.default_permission}\n"
            f"database_uri = {self.uri(self.auth_db)}\n"
            "admin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "auth_cache_ttl_seconds = 60\n")  # 0 (MLflow's default) hashes the password on every request

    def start(self) -> None:
        if self.running():
            raise ResourceError(f"A server of {self.state} is already running ({self.url}); `stop` it first.")
        self.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        first = not (self.state / "initialized").is_file()
        env = self.env()
        if first:
            env["MLFLOW_AUTH_ADMIN_PASSWORD"] = _admin_password()
        self.create_database()
        self.write_auth_config()
        log = open(self.state / "server.log", "ab")
        upgrade = subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", self.uri(self.db)], env=env,
                                 stdout=log, stderr=subprocess.STDOUT, timeout=600)
        if upgrade.returncode != 0:
            raise ResourceError(f"`mlflow db upgrade` failed; see {self.state / 'server.log'}.")
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.uri(self.db),
             "--artifacts-destination", str(self.state / "artifacts"), "--app-name", "basic-auth",
             "--host", self.args.host, "--port", str(self.args.port), "--workers", str(self.args.workers)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        (self.state / "server.pid").write_text(str(server.pid))
        self.wait_healthy(server)
        (self.state / "initialized").touch()

    def wait_healthy(self, server: subprocess.Popen, timeout: float = 180) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise ResourceError(f"mlflow server exited ({server.returncode}); see {self.state / 'server.log'}.")
            try:
                if requests.get(f"{self.url}/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise ResourceError(f"mlflow server did not answer on {self.url}/health in {timeout:.0f} s; see the log.")

    def pid(self) -> int | None:
        try:
            return int((self.state / "server.pid").read_text())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid()
        try:
            return pid is not None and os.getpgid(pid) == pid
        except ProcessLookupError:
            return False

    def stop(self) -> None:
        pid = self.pid()
        if pid is None or not self.running():
            return
        os.killpg(pid, signal.SIGTERM)  # the server and its workers share the process group
        for _ in range(100):
            if not self.running():
                break
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
        (self.state / "server.pid").unlink(missing_ok=True)

    def destroy(self) -> None:
        self.stop()
        _postgres_sql("".join(f"DROP DATABASE IF EXISTS {db} WITH (FORCE);\n" for db in (self.db, self.auth_db))
                      + f"DROP ROLE IF EXISTS {self.role};\n", self.args.pg_admin_uri)
        shutil.rmtree(self.state, ignore_errors=True)


def _admin_password() -> str:
    password = os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD", "")
    if not password and sys.stdin.isatty():
        password = getpass.getpass("Choose the admin password (12+ characters): ")
        if getpass.getpass("Again: ") != password:
            raise ResourceError("The two passwords differ.")
    if len(password) < 12:
        raise ResourceError("The first start creates the admin user: set MLFLOW_AUTH_ADMIN_PASSWORD to a password "
                            "of 12 characters or more (or type one at the prompt). It is not stored by rps.")
    return password


def _auth_client(url: str):
    from mlflow.server import get_app_client

    if not os.environ.get("MLFLOW_TRACKING_USERNAME"):
        raise ResourceError("Sign in as an admin: set MLFLOW_TRACKING_USERNAME=admin and MLFLOW_TRACKING_PASSWORD.")
    return get_app_client("basic-auth", tracking_uri=url)


def add_user(url: str, name: str, admin: bool) -> None:
    password = os.environ.get("RPS_NEW_USER_PASSWORD") or getpass.getpass(f"Password for {name} (12+ characters): ")
    client = _auth_client(url)
    client.create_user(name, password)
    if admin:
        client.update_user_admin(name, True)


def grant(url: str, user: str, experiment: str, permission: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(url)
    found = mlflow.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else mlflow.create_experiment(experiment)
    _auth_client(url).grant_user_permission(user, "experiment", experiment_id, permission)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("start", "stop", "status", "destroy", "add-user", "grant"))
    parser.add_argument("names", nargs="*", help=f"add-user: NAME; grant: USER EXPERIMENT {'|'.join(GRANTS)}")
    parser.add_argument("--state-dir", default="mlruns/server", help="secrets, config, artifacts, log (default mlruns/server)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers (default 2)")
    parser.add_argument("--default-permission", default="EDIT", choices=DEFAULT_PERMISSIONS,
                        help="what every signed-in user may do where nobody granted otherwise (default EDIT)")
    parser.add_argument("--db-name", default="rps_mlflow", help="PostgreSQL role and database (+ <name>_auth)")
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-admin-uri", help="a superuser connection for the set-up (default: the postgres OS user)")
    parser.add_argument("--admin", action="store_true", help="add-user: make the user an admin")
    args = parser.parse_args(argv)
    server = Server(args)
    try:
        if args.command == "start":
            server.start()
            print(f"MLflow tracking server on {server.url} (sign-in required; state and log in {server.state}).\n"
                  f"Point rps at it:  export MLFLOW_TRACKING_URI={server.url} MLFLOW_TRACKING_USERNAME=<user> "
                  f"MLFLOW_TRACKING_PASSWORD=<password>")
        elif args.command == "stop":
            server.stop()
        elif args.command == "status":
            print(f"{server.url}: {'running' if server.running() else 'stopped'} (state {server.state})")
            return 0 if server.running() else 1
        elif args.command == "destroy":
            server.destroy()
        elif args.command == "add-user" and len(args.names) == 1:
            add_user(server.url, args.names[0], args.admin)
        elif args.command == "grant" and len(args.names) == 3 and args.names[2] in GRANTS:
            grant(server.url, *args.names)
        else:
            parser.error(f"{args.command}: wrong arguments ({' '.join(args.names)}); see --help")
    except RpsError as err:
        print(f"rps.server: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # MLflow's auth client raises its own errors for refused requests
        code = getattr(err, "error_code", type(err).__name__)
        detail = "that user exists already" if code == "RESOURCE_ALREADY_EXISTS" else str(err).splitlines()[0][:300]
        print(f"rps.server: error: {code}: {detail}", file=sys.stderr)  # (MLflow's own text shows password hashes)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
