"""Credentials never reach a file: command lines that carry one are refused before anything is written.

Hydra writes a run's overrides verbatim into ``.hydra/config.yaml``, ``overrides.yaml`` and
``hydra.yaml`` under the run's output folder as soon as the job starts, before rps sees the
config: ``tracking_uri=http://alice:secret@host`` would leave the password on disk however rps
redacts it later. So ``rps.run`` and ``rps.tune`` check their own command line first
(:func:`secret_in_command`) and stop with exit code 2 when it holds a secret, before Hydra runs.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

# An override's key (its last dotted part) that names a secret.
SECRET_KEY = re.compile(r"(^|[_-])(password|passwd|pass|pwd|token|secret|api_?key|access_?key|private_?key|credentials?)$",
                        re.I)
# A value holding a secret: user:password@ in a URI, or a query/connection parameter such as password=...
PASSWORD_IN_URI = re.compile(r"://[^/@\s:]*:[^/@\s]*@")
SECRET_PARAMETER = re.compile(r"(^|[?&;,\s'\"])(password|passwd|pwd|token|secret|api_?key|access_?key)=", re.I)
USERINFO = re.compile(r"://[^/@\s]+@")
HOW = ("Give addresses without credentials (http://host:port) and pass secrets the way their tools read them: "
       "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD for a tracking server, PGPASSFILE for a "
       "PostgreSQL study storage. Nothing was written.")


def _override_problem(arg: str) -> Optional[str]:
    key, sep, value = arg.partition("=")
    if not sep or arg.startswith("-"):
        return None
    key = key.lstrip("+~")
    name = key.rsplit(".", 1)[-1]
    if SECRET_KEY.search(name):
        return f"The override {key}=... names a secret"
    if name == "tracking_uri" and USERINFO.search(value):
        return f"The tracking URI given as {key}=... carries credentials"
    if PASSWORD_IN_URI.search(value) or SECRET_PARAMETER.search(value):
        return f"The value of {key}=... carries a password or token"
    return None


def secret_in_command(args: list[str], environ: Mapping[str, str]) -> Optional[str]:
    """Why ``args`` (a command's overrides) or ``$MLFLOW_TRACKING_URI`` would put a secret on disk,
    as a one-paragraph error naming the fix; None when they hold none. The secret itself is never
    repeated."""
    for arg in args:
        problem = _override_problem(arg)
        if problem:
            return (f"{problem}; Hydra would write it into the run's records (.hydra/config.yaml, "
                    f"overrides.yaml) and rps would log it. {HOW}")
    if USERINFO.search(environ.get("MLFLOW_TRACKING_URI", "")):
        return f"The tracking URI in MLFLOW_TRACKING_URI carries credentials, which would be printed and logged. {HOW}"
    return None


def exit_if_secret(command: str, args: list[str], environ: Mapping[str, str]) -> None:
    """Print :func:`secret_in_command`'s error as ``<command>: error: ...`` and exit 2, if there is one."""
    import sys

    problem = secret_in_command(args, environ)
    if problem:
        print(f"{command}: error: {problem}", file=sys.stderr)
        sys.exit(2)
