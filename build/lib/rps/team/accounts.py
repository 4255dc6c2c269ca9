"""Users, passwords and grants of a team server, through MLflow's own auth store and API.

Password rule (checked by ``add-user``, by the first ``start`` for the admin, and by the server
itself for every user created or password changed through its API): at least 12 characters
(MLflow's own minimum), at least 8 different characters (so ``aaaaaaaaaaaa`` and ``abcabcabcabc``
are refused), not containing the user name, and not MLflow's former default admin password. It
is a floor against the obvious, not a strength meter: use a password manager's random passwords.
"""

from __future__ import annotations

import difflib
import getpass
import os
import sys
from typing import Optional

from rps.common.errors import ResourceError

MIN_LENGTH, MIN_DISTINCT = 12, 8
KNOWN = frozenset({"password1234"})  # MLflow's former default admin password
ADMIN = "admin"
GRANTS = ("READ", "USE", "EDIT", "MANAGE", "DENY")  # for one user on one experiment


def password_problem(username: str, password: str) -> Optional[str]:
    """What is wrong with ``password`` for ``username`` under rps's rule, or None."""
    if len(password) < MIN_LENGTH:
        return f"A password needs at least {MIN_LENGTH} characters."
    if len(set(password)) < MIN_DISTINCT:
        return f"A password needs at least {MIN_DISTINCT} different characters."
    if len(username) >= 3 and username.lower() in password.lower():
        return "A password must not contain the user name."
    if password.lower() in KNOWN:
        return "That password is published (MLflow's former default)."
    return None


def _checked(username: str, password: str) -> str:
    problem = password_problem(username, password)
    if problem:
        raise ResourceError(f"{problem} Choose another password for '{username}' (it is not stored by rps).")
    return password


def new_password(username: str, variable: str) -> str:
    """A password for ``username``: from the environment variable, else typed twice at a terminal."""
    password = os.environ.get(variable, "")
    if not password and sys.stdin.isatty():
        password = getpass.getpass(f"Password for {username} ({MIN_LENGTH}+ characters, {MIN_DISTINCT}+ different): ")
        if getpass.getpass("Again: ") != password:
            raise ResourceError("The two passwords differ.")
    if not password:
        raise ResourceError(f"Set {variable} to the password for '{username}' (or run this at a terminal to type it).")
    return _checked(username, password)


def ensure_admin(auth_store) -> bool:
    """Create the admin user in the auth database if it is missing (before the server starts, so
    the server never needs the admin password in its environment). Returns whether it created it."""
    if auth_store.has_user(ADMIN, use_primary=True):
        return False
    auth_store.create_user(ADMIN, new_password(ADMIN, "MLFLOW_AUTH_ADMIN_PASSWORD"), is_admin=True)
    return True


def auth_client(url: str):
    from mlflow.server import get_app_client

    if not os.environ.get("MLFLOW_TRACKING_USERNAME"):
        raise ResourceError("Sign in as an admin: set MLFLOW_TRACKING_USERNAME=admin and MLFLOW_TRACKING_PASSWORD.")
    return get_app_client("basic-auth", tracking_uri=url)


def add_user(url: str, name: str, admin: bool) -> None:
    password = new_password(name, "RPS_NEW_USER_PASSWORD")
    client = auth_client(url)
    client.create_user(name, password)
    if admin:
        client.update_user_admin(name, True)


def grant(url: str, user: str, experiment: str, permission: str) -> None:
    """Give ``user`` ``permission`` on an existing experiment; an unknown name is an error naming
    close ones (a typo must not create an empty experiment that nobody uses)."""
    import mlflow
    from mlflow.entities import ViewType

    client = mlflow.MlflowClient(tracking_uri=url)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = [e.name for e in client.search_experiments(view_type=ViewType.ALL, max_results=50000)]
        close = difflib.get_close_matches(experiment, names, n=5, cutoff=0.6)
        hint = f"Close names: {', '.join(close)}." if close else f"It has {len(names)} experiments, none close."
        raise ResourceError(f"There is no experiment '{experiment}' on {url}; nothing was granted or created. "
                            f"{hint} Check the name, or create the experiment first (a run with "
                            f"experiment_name={experiment}, or `mlflow experiments create -n {experiment}`).")
    auth_client(url).grant_user_permission(user, "experiment", found.experiment_id, permission)
