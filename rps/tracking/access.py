"""Sign-in and permission refusals of a tracking server, as errors that name the fix."""

from __future__ import annotations

import os
from typing import Optional

from rps.common.errors import ResourceError
from rps.tracking.record import redact


def access_error(err: BaseException, uri: str, experiment: str) -> Optional[ResourceError]:
    """A clear error if ``err`` is the server refusing who we are (401) or what we may do (403)."""
    code, text = getattr(err, "error_code", ""), str(err)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if code == "UNAUTHENTICATED" or "error code 401" in text or "401 Client Error" in text:
        who = f"as '{user}' (MLFLOW_TRACKING_USERNAME)" if user else "without credentials"
        return ResourceError(
            f"The MLflow tracking server {redact(uri)} refused the sign-in {who}: set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to your account on that server "
            "(an admin creates it: python -m rps.server add-user <name>). Nothing was run."
        )
    if code == "PERMISSION_DENIED" or "error code 403" in text or "403 Client Error" in text:
        return ResourceError(
            f"The MLflow tracking server {redact(uri)} does not let '{user or 'this user'}' write to the "
            f"experiment '{experiment}' (HTTP 403): ask an admin to grant you EDIT on it (python -m "
            f"rps.server grant {user or '<user>'} {experiment} EDIT), sign in as another user "
            "(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD), or choose another experiment_name=... "
            "Nothing was run."
        )
    return None
