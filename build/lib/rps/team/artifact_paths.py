"""One spelling per proxied artifact path: a request is rewritten to its plain form, or refused,
before MLflow (or rps) decides who may touch it.

Why: MLflow 3.17.2's basic-auth finds the experiment of a proxied artifact path with the pattern
``^(\\d+)/`` on the path decoded once more (``_EXPERIMENT_ID_PATTERN`` in
``mlflow/server/auth/__init__.py``). A path that starts ``./1/...`` (or ``%2e/1/...``,
``%252e%252f1/...``) names no experiment there, so the check falls back to the default
permission, while the artifact store still serves ``1/...``: a DENY grant could be read around.
Here every spelling is decoded until it stops changing (as MLflow's ``validate_path_is_safe``
does), ``.`` and empty segments are dropped and ``..`` resolved, so MLflow, rps's owner rule and
the artifact store all see the same plain path. Refused (HTTP 400): backslashes, control
characters, ``#``, a URI scheme, ``..`` above the root, more than 10 layers of encoding.
"""

from __future__ import annotations

import re
from typing import Optional
from urllib.parse import parse_qsl, quote, unquote, urlencode

# The proxied-artifact routes of MLflow 3.17.2 (``get_endpoints`` and ``artifact_router``).
ARTIFACT_ROUTE = re.compile(
    r"^(/(?:api|ajax-api)/2\.0/mlflow-artifacts/(?:artifacts|mpu/create|mpu/complete|mpu/abort|presigned))"
    r"(?:/(.*))?$", re.DOTALL)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_MAX_DECODES = 10


class BadArtifactPath(ValueError):
    """The path has no safe plain form; the request is refused with HTTP 400."""


def mentions_artifact_routes(path: str) -> bool:
    """Whether ``path``, however encoded, may be aimed at MLflow's proxied artifact routes (a path
    encoded too often to tell counts: :func:`rewrite` refuses it)."""
    try:
        return "mlflow-artifacts" in _decoded(path).lower()
    except BadArtifactPath:
        return True


def _decoded(text: str) -> str:
    for _ in range(_MAX_DECODES):
        once = unquote(text)
        if once == text:
            return text
        text = once
    raise BadArtifactPath("the path is encoded more than 10 times")


def canonical(path: str) -> str:
    """The plain form of an artifact path: ``1/./x//y``, ``%2e/1/x/y`` and ``1/z/../x/y`` are ``1/x/y``."""
    text = _decoded(path)
    if "\\" in text or "#" in text or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise BadArtifactPath("backslashes, '#' and control characters are not allowed in artifact paths")
    segments: list[str] = []
    for segment in text.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not segments:
                raise BadArtifactPath("'..' leads above the artifact root")
            segments.pop()
        else:
            segments.append(segment)
    plain = "/".join(segments)
    if _SCHEME.match(plain):
        raise BadArtifactPath("an artifact path is relative, not a URI")
    return plain + ("/" if plain and text.endswith("/") else "")


def canonical_query(query: str) -> str:
    """The query string with its ``path`` parameter (the listing's folder) in plain form."""
    pairs = parse_qsl(query, keep_blank_values=True)
    if sum(1 for key, _ in pairs if key == "path") > 1:
        raise BadArtifactPath("more than one 'path' parameter")
    return urlencode([(key, canonical(value) if key == "path" else value) for key, value in pairs])


def canonical_route(path: str) -> Optional[tuple[str, str]]:
    """``(route, artifact path in plain form)`` for a request path on an artifact route, else None."""
    match = ARTIFACT_ROUTE.match(path)
    if match is None:
        return None
    return match.group(1), canonical(match.group(2) or "")


def rewrite(path: str, query: str) -> tuple[str, bytes, str]:
    """The request's ``(path, raw path, query)`` with the artifact path in plain form.

    Raises :class:`BadArtifactPath` for a path aimed at the artifact routes that is not one of
    them (e.g. ``/api/2.0//mlflow-artifacts/...``) or has no plain form.
    """
    found = canonical_route(path)
    if found is None:
        raise BadArtifactPath("not one of MLflow's proxied-artifact routes")
    route, artifact = found
    new_path = f"{route}/{artifact}" if artifact or path != route else route
    return new_path, quote(new_path).encode("ascii"), canonical_query(query)


_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def owner_of_path(artifact: str) -> Optional[tuple[str, str, str]]:
    """What a plain artifact path belongs to: ``("run", experiment_id, run_id)``,
    ``("model", experiment_id, model_id)`` (MLflow 3 logged models: ``<exp>/models/<id>/artifacts``),
    ``("trace", experiment_id, trace_id)``, or None (the experiment's root, the store's root, ...)."""
    parts = artifact.strip("/").split("/")
    if len(parts) < 3 or not parts[0].isdigit():
        return None
    if len(parts) >= 4 and parts[1] in ("models", "traces") and parts[3] == "artifacts":
        return ("model" if parts[1] == "models" else "trace"), parts[0], parts[2]
    if _RUN_ID.match(parts[1]) and parts[2] == "artifacts":
        return "run", parts[0], parts[1]
    return None
