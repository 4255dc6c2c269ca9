"""The ``rps-auth`` MLflow app: ``mlflow server --app-name rps-auth`` (entry point
``[project.entry-points."mlflow.app"]`` in pyproject.toml).

It is MLflow's own basic-auth app (``mlflow.server.auth.create_app``: users, grants, the
permission checks of every route) with rps's guards added through MLflow's and Flask's own hooks:

- :class:`rps.team.guard.Guard`, an ASGI middleware outside MLflow's FastAPI app, sees every
  request first (sign-in, rate limit, artifact paths, artifact owners, owner stamping);
- :func:`owner_guard` and :func:`password_guard`, Flask ``before_request`` hooks that run after
  MLflow's own, refuse changes to other users' runs and logged models, experiments with a
  chosen artifact location, and weak passwords;
- :func:`authenticate`, MLflow's ``authorization_function`` (set in basic_auth.ini), checks Basic
  credentials through the same cache as the guard, so a credential costs one password-hash check
  per worker and a password change takes effect at once.

Nothing here serves a request itself. Settings: the ``[rps]`` section of basic_auth.ini.
"""

from __future__ import annotations

import configparser
import os
from typing import Optional

from rps.team import ownership, signin
from rps.team.accounts import password_problem
from rps.team.guard import Guard, not_signed_in, too_many

_services: dict = {}


def settings() -> signin.Limits:
    """The sign-in limits from the ``[rps]`` section of the auth config (MLflow reads ``[mlflow]``)."""
    config = configparser.ConfigParser()
    config.read(os.environ.get("MLFLOW_AUTH_CONFIG_PATH", ""))
    rps = config["rps"] if config.has_section("rps") else {}
    defaults = signin.Limits()
    return signin.Limits(per_user=int(rps.get("signin_failures_per_user", defaults.per_user)),
                         per_address=int(rps.get("signin_failures_per_address", defaults.per_address)),
                         window=float(rps.get("signin_window_seconds", defaults.window)))


def _verifier() -> signin.Verifier:
    return _services["verifier"]


def _tracking_store():
    from mlflow.server.handlers import _get_tracking_store

    return _get_tracking_store()


def sign_in(username: str, password: str, address: str):
    """(user, None) for right credentials, else (None, a 401 or 429 response); failures are counted."""
    verifier, limiter = _verifier(), _services["limiter"]
    user = verifier.cached(username, password)
    if user is not None:
        return user, None
    wait = limiter.retry_after(username, address)
    if wait is not None:
        return None, too_many(wait)
    user = verifier.check(username, password)
    if user is None:
        limiter.record(username, address)
        return None, not_signed_in()
    return user, None


def authenticate():
    """MLflow's ``authorization_function``: the request's Basic credentials, checked (cached)."""
    from flask import g, request
    from mlflow.server.auth import make_basic_auth_response

    auth = request.authorization
    if auth is None or auth.type != "basic" or not auth.username:
        return make_basic_auth_response()
    key = request.headers.get("Authorization")
    if g.get("rps_authenticated") != key:  # MLflow asks several times per request
        if _verifier().user(auth.username, auth.password or "") is None:
            return make_basic_auth_response()
        g.rps_authenticated = key
    return auth


def _forbidden(message: str):
    from flask import jsonify

    return jsonify(error_code="PERMISSION_DENIED", message=f"rps: {message}."), 403


def owner_guard():
    """Refuse (403) a non-admin's change of a run or logged model they do not own, and an
    experiment created with its own artifact location (the server reads and writes that
    experiment's files wherever it points: another experiment's folder, its own disk)."""
    from flask import request
    from mlflow.server import auth

    if auth.is_unprotected_route(request.path) or request.authorization is None:
        return None
    validator = getattr(auth._find_validator(request), "__name__", "")
    if validator not in ownership.GUARDED and validator != "validate_can_create_experiment":
        return None
    if auth.store.get_user(request.authorization.username).is_admin:
        return None
    body = request.get_json(silent=True, force=True)
    if validator == "validate_can_create_experiment":
        location = body.get("artifact_location") if isinstance(body, dict) else None
        return _forbidden("only an admin may choose an experiment's artifact location") if location else None
    document = ownership.request_document(request.args.to_dict(flat=False), request.view_args or {}, body)
    runs, models, keys = ownership.named(document, request.path)
    if validator == "validate_can_create_logged_model":
        keys = set()  # its owner tag was stamped by rps.team.guard
    why = ownership.refusal(_tracking_store(), request.authorization.username, runs, models, keys)
    return _forbidden(why) if why else None


def password_guard():
    """Refuse (400) a new password that breaks rps's rule (see :func:`rps.team.accounts.password_problem`)."""
    from flask import jsonify, request
    from mlflow.server.auth import routes

    if request.path not in (routes.CREATE_USER, routes.AJAX_CREATE_USER, routes.CREATE_USER_UI,
                            routes.UPDATE_USER_PASSWORD, routes.AJAX_UPDATE_USER_PASSWORD):
        return None
    fields = request.form or request.get_json(silent=True, force=True)
    if not hasattr(fields, "get"):
        fields = {}
    problem = password_problem(str(fields.get("username") or ""), str(fields.get("password") or ""))
    if problem:
        return jsonify(error_code="INVALID_PARAMETER_VALUE", message=problem), 400
    return None


def _artifact_refusal(username: str, artifact: str) -> Optional[str]:
    return ownership.artifact_refusal(_tracking_store(), username, artifact)


def _check_setup() -> None:
    from mlflow.server import STATIC_PREFIX_ENV_VAR

    if os.environ.get(STATIC_PREFIX_ENV_VAR):
        raise RuntimeError("rps-auth does not support --static-prefix (its path checks assume none).")


def create_app():
    """The app factory ``mlflow server --app-name rps-auth`` runs in each uvicorn worker."""
    from mlflow.server import app as flask_app
    from mlflow.server import auth

    _check_setup()
    asgi = auth.create_app(flask_app)
    if asgi is flask_app:
        raise RuntimeError("rps-auth needs MLflow's default uvicorn server (no --gunicorn-opts/--waitress-opts).")
    # MLflow refuses admin logins with the password its old versions shipped (GHSA-gq3w-7jj3-x7gr)
    legacy = getattr(auth, "_is_disabled_legacy_admin_login", lambda username, password, user: False)
    _services["verifier"] = signin.Verifier(auth.store, refused=legacy)
    _services["limiter"] = signin.FailureLimiter(auth.store.engine, settings())
    flask_app.before_request(owner_guard)  # after MLflow's own check (registered in create_app)
    flask_app.before_request(password_guard)
    asgi.add_middleware(Guard, sign_in=sign_in, artifact_refusal=_artifact_refusal,
                        unprotected=auth.is_unprotected_route)
    return asgi
