"""The outermost layer of the ``rps-auth`` app: every request passes here before MLflow sees it,
whichever of MLflow's routes serves it (Flask through the WSGI bridge, or FastAPI natively, as
artifact downloads and uploads are in MLflow 3.17.2).

In order:

1. an ``Authorization`` header that is not well-formed Basic gets 401 with
   ``WWW-Authenticate: Basic`` (MLflow 3.17.2 answered ``Bearer``/``Digest`` on Flask routes with
   HTTP 500 and a traceback in the log);
2. Basic credentials are checked (:class:`rps.team.signin.Verifier`), failures are counted and
   limited (:class:`rps.team.signin.FailureLimiter`): 401, or 429 with ``Retry-After``;
3. a request aimed at the proxied-artifact routes is rewritten to its plain path, or refused with
   400 (:mod:`rps.team.artifact_paths`);
4. an artifact write (PUT, POST, DELETE) by a non-admin must land in a run or logged model the
   user owns (:func:`rps.team.ownership.artifact_refusal`), else 403;
5. a run or logged model being created gets the signed-in user as its owner, whatever the client
   sent (:func:`stamp_owner`).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Callable, Optional

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, PlainTextResponse

from rps.team import artifact_paths
from rps.team.ownership import OWNER_TAG

MAX_CREATE_BODY = 1 << 20  # a run's or model's create request: ids, a name, a few tags
WRITES = frozenset({"PUT", "POST", "DELETE", "PATCH"})
NOT_SIGNED_IN = ("You are not authenticated. Please see https://www.mlflow.org/docs/latest/auth/index.html"
                 "#authenticating-to-mlflow on how to authenticate.")
# Requests that create a run or a logged model: (tag naming the owner, whether the body has user_id).
_CREATES = {f"/{api}/2.0/mlflow/{route}": stamp
            for api in ("api", "ajax-api")
            for route, stamp in (("runs/create", ("mlflow.user", True)),
                                 ("runs/create-promptlab-run", ("mlflow.user", True)),
                                 ("logged-models", (OWNER_TAG, False)))}


def basic_credentials(header: bytes) -> Optional[tuple[str, str]]:
    """(user, password) from a Basic ``Authorization`` header, or None if it is anything else."""
    parts = header.decode("latin-1").split()
    if len(parts) != 2 or parts[0].lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(parts[1], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, colon, password = decoded.partition(":")
    return (username, password) if colon and username else None


def stamp_owner(body: bytes, username: str, tag: str, user_id: bool) -> Optional[bytes]:
    """The create request's JSON with ``tag`` (and ``user_id``) naming ``username``; None if not JSON."""
    try:
        document = json.loads(body or b"{}")
        if isinstance(document, str):  # older clients double-encode (MLflow decodes twice too)
            document = json.loads(document)
    except ValueError:
        return None
    tags = document.get("tags", []) if isinstance(document, dict) else None
    if not isinstance(tags, list):
        return None
    if user_id:
        document.pop("userId", None)
        document["user_id"] = username
    document["tags"] = [t for t in tags if not (isinstance(t, dict) and t.get("key") == tag)]
    document["tags"].append({"key": tag, "value": username})
    return json.dumps(document).encode()


class Guard:
    """Pure ASGI middleware around MLflow's app (see the module's docstring)."""

    def __init__(self, app, sign_in: Callable, artifact_refusal: Callable, unprotected: Callable[[str], bool]):
        self.app, self.sign_in, self.artifact_refusal, self.unprotected = app, sign_in, artifact_refusal, unprotected

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.unprotected(scope["path"]):
            return await self.app(scope, receive, send)
        user, refused = None, None
        header = dict(scope["headers"]).get(b"authorization")
        if header is not None:
            credentials = basic_credentials(header)
            if credentials is None:
                refused = not_signed_in()
            else:
                address = (scope.get("client") or ("?", 0))[0]
                user, refused = await run_in_threadpool(self.sign_in, *credentials, address)
        if refused is None and artifact_paths.mentions_artifact_routes(scope["path"]):
            scope, refused = await self._artifact(scope, user)
        elif refused is None and user is not None and scope["method"] == "POST" and scope["path"] in _CREATES:
            scope, receive, refused = await _stamped(scope, receive, user.username, *_CREATES[scope["path"]])
        if refused is not None:
            return await refused(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _artifact(self, scope, user):
        try:
            path, raw, query = artifact_paths.rewrite(scope["path"], scope["query_string"].decode("latin-1"))
        except artifact_paths.BadArtifactPath as err:
            return scope, _error(400, "INVALID_PARAMETER_VALUE", f"Invalid artifact path: {err}.")
        scope = dict(scope, path=path, raw_path=raw, query_string=query.encode("ascii"))
        if user is not None and not user.is_admin and scope["method"] in WRITES:
            _, artifact = artifact_paths.canonical_route(path)
            why = await run_in_threadpool(self.artifact_refusal, user.username, artifact)
            if why:
                return scope, _error(403, "PERMISSION_DENIED", f"rps: {why}.")
        return scope, None


async def _stamped(scope, receive, username: str, tag: str, user_id: bool):
    """The create request with its owner stamped in: (scope, receive, None), or a refusal."""
    body, more = b"", True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return scope, receive, _error(400, "INVALID_PARAMETER_VALUE", "The request ended early.")
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > MAX_CREATE_BODY:
            return scope, receive, _error(413, "INVALID_PARAMETER_VALUE", "The request is too large.")
    stamped = stamp_owner(body, username, tag, user_id)
    if stamped is None:
        return scope, receive, _error(400, "INVALID_PARAMETER_VALUE", "The request body is not a JSON object.")
    headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-length", b"transfer-encoding")]
    scope = dict(scope, headers=headers + [(b"content-length", str(len(stamped)).encode())])
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": stamped, "more_body": False}

    return scope, replay, None


def _error(status: int, code: str, message: str):
    return JSONResponse({"error_code": code, "message": message}, status_code=status)


def too_many(retry_after: int):
    return PlainTextResponse(
        f"Too many failed sign-ins for this user name or from this address; try again in {retry_after} s.",
        status_code=429, headers={"Retry-After": str(retry_after)})


def not_signed_in():
    return PlainTextResponse(NOT_SIGNED_IN, status_code=401, headers={"WWW-Authenticate": 'Basic realm="mlflow"'})
