"""A team's MLflow tracking server, from MLflow's own parts: PostgreSQL store, proxied artifacts,
sign-in, and rps's guards (docs/deployment.md).

    export MLFLOW_AUTH_ADMIN_PASSWORD='<12+ characters, 8+ different>'   # or typed at the prompt
    python -m rps.server start                    # http://127.0.0.1:5000, state in mlruns/server/
    python -m rps.server add-user alice           # as the admin (MLFLOW_TRACKING_USERNAME/PASSWORD)
    python -m rps.server grant bob shared-experiment EDIT
    python -m rps.server status | stop | destroy

``start`` creates a PostgreSQL role and two databases if they are missing (the tracking store and
the users, as the ``postgres`` superuser through ``psql``; the role's password is generated and
kept in ``<state>/pgpass``), runs ``mlflow db upgrade``, creates the admin user in the users'
database itself on the first start (so the admin password never reaches the server's
environment), and starts ``mlflow server --app-name rps-auth`` (:mod:`rps.team.auth_app`) with
``--backend-store-uri postgresql+psycopg2://...`` and ``--artifacts-destination <state>/artifacts``
(clients get ``mlflow-artifacts:/`` URIs and need no storage credentials). Every signed-in user
may read every experiment (``--default-permission READ``) and write only where granted; nobody
but a run's owner changes the run. ``<state>`` and everything in it is private to its owner
(0700/0600).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import rps  # noqa: F401
from rps.common.errors import ResourceError, RpsError
from rps.team import accounts, processes

APP = "rps-auth"  # the mlflow.app entry point of rps.team.auth_app
UPSTREAM_APP, UPSTREAM_AUTHENTICATE = "basic-auth", "mlflow.server.auth:authenticate_request_basic_auth"
DEFAULT_PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")  # for every signed-in user
SECRET_VARIABLES = ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME",
                    "RPS_NEW_USER_PASSWORD")  # never passed on to the server
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
    out = subprocess.run([*command, "-X", "-q", "-t", "-v", "ON_ERROR_STOP=1"], input=sql, capture_output=True,
                         text=True, cwd="/")
    if out.returncode != 0:
        raise ResourceError(
            f"PostgreSQL refused the set-up ({out.stderr.strip()[:300]}). Start PostgreSQL (e.g. `pg_ctlcluster "
            "15 main start`), and run this as root or as a user who may `sudo -u postgres`, or pass "
            "--pg-admin-uri postgresql://<superuser>@<host>/postgres."
        )
    return out.stdout


def _private(path: Path, mode: int) -> None:
    try:
        path.chmod(mode)
    except FileNotFoundError:
        pass


class Server:
    """The files and processes of one server: ``<state>/`` holds its secrets, config, artifacts,
    log and pid, all readable by their owner only."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.state = args, Path(args.state_dir).expanduser().resolve()
        self.url = f"http://{args.host}:{args.port}"
        self.role, self.db, self.auth_db = args.db_name, args.db_name, f"{args.db_name}_auth"

    def uri(self, db: str) -> str:  # no password inside: libpq reads it from PGPASSFILE
        return f"postgresql+psycopg2://{self.role}@{self.args.pg_host}:{self.args.pg_port}/{db}"

    def write_private(self, name: str, text: str) -> None:
        path = self.state / name
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as f:
            f.write(text)
        path.chmod(0o600)

    def secret(self, name: str, make) -> str:
        if not (self.state / name).is_file():
            self.write_private(name, make())
        return (self.state / name).read_text().strip()

    def prepare_state(self) -> None:
        """``<state>`` 0700 and its files 0600, whether new or left by an older rps; new files
        (also the server's: artifacts, log) get the same through the umask."""
        os.umask(0o077)
        self.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        _private(self.state, 0o700)
        for entry in self.state.iterdir():
            _private(entry, 0o700 if entry.is_dir() else 0o600)

    def env(self) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
        return clean | {"PGPASSFILE": str(self.state / "pgpass"),
                        "MLFLOW_AUTH_CONFIG_PATH": str(self.state / "basic_auth.ini"),
                        "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret("flask_secret", lambda: secrets.token_hex(32)),
                        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # GenAI job workers: not needed
                        processes.MARKER: str(self.state)}

    def create_database(self) -> None:
        password = self.secret("pg_password", lambda: secrets.token_urlsafe(24))
        self.write_private("pgpass", f"{self.args.pg_host}:{self.args.pg_port}:*:{self.role}:{password}\n")
        sql = [f"""DO $$ BEGIN
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{self.role}')
              THEN CREATE ROLE {self.role} LOGIN PASSWORD '{password}';
              ELSE ALTER ROLE {self.role} LOGIN PASSWORD '{password}'; END IF; END $$;"""]
        sql += [f"SELECT 'CREATE DATABASE {db} OWNER {self.role}' WHERE NOT EXISTS "
                f"(SELECT FROM pg_database WHERE datname = '{db}')\\gexec" for db in (self.db, self.auth_db)]
        _postgres_sql("\n".join(sql) + "\n", self.args.pg_admin_uri)

    def write_auth_config(self) -> None:
        guarded = self.args.app == APP  # else MLflow's own basic-auth, as rps ran it before rps-auth
        self.write_private("basic_auth.ini",
                           "[mlflow]\n"
                           f"default_permission = {self.args.default_permission}\n"
                           f"database_uri = {self.uri(self.auth_db)}\n"
                           f"admin_username = {accounts.ADMIN}\n"
                           "authorization_function = "
                           f"{'rps.team.auth_app:authenticate' if guarded else UPSTREAM_AUTHENTICATE}\n"
                           f"auth_cache_ttl_seconds = {0 if guarded else 60}\n"  # rps.team.signin caches, never stale
                           "\n[rps]\n"
                           "signin_failures_per_user = 10\n"
                           "signin_failures_per_address = 30\n"
                           "signin_window_seconds = 300\n")

    def bootstrap_users_database(self) -> None:
        """Migrate the users' database, create the admin (first start) and rps's sign-in table."""
        os.environ.update(PGPASSFILE=str(self.state / "pgpass"), MLFLOW_AUTH_CONFIG_PATH=str(self.state / "basic_auth.ini"))
        from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

        from rps.team.signin import FailureLimiter, Limits

        store = SqlAlchemyStore()
        store.init_db(self.uri(self.auth_db))
        accounts.ensure_admin(store)
        FailureLimiter(store.engine, Limits())
        store.engine.dispose()

    def processes(self) -> list[int]:
        return processes.marked(self.state)

    def refuse_if_busy(self) -> None:
        """Refuse to start while this server's processes run (even without their main process), or
        while anything holds the port, naming what holds it."""
        mine, holders = self.processes(), processes.listeners(self.args.port)
        stop = f"Run `python -m rps.server stop --state-dir {self.state}` first."
        if self.pid() in mine:
            raise ResourceError(f"The server of {self.state} is already running (pid {self.pid()}). {stop}")
        if mine:
            raise ResourceError(
                f"The server of {self.state} left {len(mine)} processes running after its main process died"
                f"{', holding port ' + str(self.args.port) if holders else ''}: "
                f"{processes.describe(set(holders) & set(mine) or mine)}. {stop}")
        if processes.port_taken(self.args.host, self.args.port):
            raise ResourceError(f"Port {self.args.port} is taken by "
                                f"{processes.describe(holders) or 'a process this user cannot see'}. "
                                "Stop it, or choose another --port.")

    def start(self) -> None:
        self.prepare_state()
        self.refuse_if_busy()
        _check_app_installed()
        self.create_database()
        self.write_auth_config()
        self.bootstrap_users_database()
        env = self.env()
        log = os.open(self.state / "server.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        upgrade = subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", self.uri(self.db)], env=env,
                                 stdout=log, stderr=subprocess.STDOUT, timeout=600)
        if upgrade.returncode != 0:
            raise ResourceError(f"`mlflow db upgrade` failed; see {self.state / 'server.log'}.")
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.uri(self.db),
             "--artifacts-destination", str(self.state / "artifacts"), "--app-name", self.args.app,
             "--host", self.args.host, "--port", str(self.args.port), "--workers", str(self.args.workers)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        os.close(log)
        self.write_private("server.pid", str(server.pid))
        try:
            self.wait_healthy(server)
            self.check_port_is_ours()
        except ResourceError:
            self.stop()
            raise

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
        raise ResourceError(f"mlflow server did not answer on {self.url}/health in {timeout:.0f} s; see the log.")

    def check_port_is_ours(self) -> None:
        strangers = set(processes.listeners(self.args.port)) - set(self.processes())
        if strangers:
            raise ResourceError(f"Another process answers on port {self.args.port}: {processes.describe(strangers)}.")

    def pid(self) -> int | None:
        try:
            return int((self.state / "server.pid").read_text())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """End every process of this server (its whole group, even if its main process is gone)
        and wait until its port is free."""
        mine = self.processes()
        left = processes.end(mine)
        if left:
            raise ResourceError(f"Could not end {processes.describe(left)}; end them by hand (kill -9).")
        deadline = time.monotonic() + 10
        while mine and processes.port_taken(self.args.host, self.args.port) and time.monotonic() < deadline:
            time.sleep(0.2)
        (self.state / "server.pid").unlink(missing_ok=True)

    def status(self) -> tuple[int, str]:
        """(exit code, one line): 0 running, 1 stopped, 3 its processes run without their main process."""
        mine, leader = self.processes(), self.pid()
        if leader in mine:
            return 0, f"{self.url}: running (pid {leader}, {len(mine)} processes; state {self.state})"
        if mine:
            serving = set(mine) & set(processes.listeners(self.args.port))
            return 3, (f"{self.url}: BROKEN: the server's main process is gone but {len(mine)} of its processes "
                       f"still run{' and answer on the port' if serving else ''} ({processes.describe(mine)}). "
                       "Run `python -m rps.server stop` (same --state-dir) to end them.")
        holders = processes.listeners(self.args.port)
        other = f"; port {self.args.port} is held by {processes.describe(holders)}" if holders else ""
        return 1, f"{self.url}: stopped (state {self.state}){other}"

    def destroy(self) -> None:
        self.stop()
        _postgres_sql("".join(f"DROP DATABASE IF EXISTS {db} WITH (FORCE);\n" for db in (self.db, self.auth_db))
                      + f"DROP ROLE IF EXISTS {self.role};\n", self.args.pg_admin_uri)
        shutil.rmtree(self.state, ignore_errors=True)


def _check_app_installed() -> None:
    from importlib.metadata import entry_points

    if not any(e.name == APP for e in entry_points(group="mlflow.app")):
        raise ResourceError(f"The MLflow app '{APP}' is not installed: reinstall rps (pip install -e '.[server]') "
                            "so that its entry point is registered.")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("start", "stop", "status", "destroy", "add-user", "grant"))
    p.add_argument("names", nargs="*", help=f"add-user: NAME; grant: USER EXPERIMENT {'|'.join(accounts.GRANTS)}")
    p.add_argument("--state-dir", default="mlruns/server", help="secrets, config, artifacts, log (default mlruns/server)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=2, help="uvicorn workers (default 2)")
    p.add_argument("--default-permission", default="READ", choices=DEFAULT_PERMISSIONS,
                   help="what every signed-in user may do where nobody granted otherwise (default READ: read "
                        "everything, write only where granted EDIT)")
    p.add_argument("--db-name", default="rps_mlflow", help="PostgreSQL role and database (+ <name>_auth)")
    p.add_argument("--pg-host", default="127.0.0.1")
    p.add_argument("--pg-port", type=int, default=5432)
    p.add_argument("--pg-admin-uri", help="a superuser connection for the set-up (default: the postgres OS user)")
    p.add_argument("--admin", action="store_true", help="add-user: make the user an admin")
    p.add_argument("--app", default=APP, choices=(APP, UPSTREAM_APP),
                   help=f"start: {UPSTREAM_APP} runs MLflow's own app without rps's guards, only to check whether "
                        "a newer MLflow still needs them (docs/deployment.md)")
    return p


def run(args: argparse.Namespace, fail) -> int:
    server = Server(args)
    if args.command == "start":
        server.start()
        print(f"MLflow tracking server on {server.url} (sign-in required; state and log in {server.state}).\n"
              f"Point rps at it:  export MLFLOW_TRACKING_URI={server.url} MLFLOW_TRACKING_USERNAME=<user> "
              f"MLFLOW_TRACKING_PASSWORD=<password>")
    elif args.command == "stop":
        server.stop()
    elif args.command == "status":
        code, line = server.status()
        print(line)
        return code
    elif args.command == "destroy":
        server.destroy()
    elif args.command == "add-user" and len(args.names) == 1:
        accounts.add_user(server.url, args.names[0], args.admin)
    elif args.command == "grant" and len(args.names) == 3 and args.names[2] in accounts.GRANTS:
        accounts.grant(server.url, *args.names)
    else:
        fail(f"{args.command}: wrong arguments ({' '.join(args.names)}); see --help")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        return run(args, p.error)
    except RpsError as err:
        print(f"rps.server: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # MLflow's auth client raises its own errors for refused requests
        code = getattr(err, "error_code", type(err).__name__)
        detail = "that user exists already" if code == "RESOURCE_ALREADY_EXISTS" else str(err).splitlines()[0][:300]
        print(f"rps.server: error: {code}: {detail}", file=sys.stderr)  # (MLflow's own text shows password hashes)
        return 2
