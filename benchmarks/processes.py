"""A command in a process of its own, with its wall time and its own peak memory."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the folder that holds benchmarks/


@dataclass
class Measured:
    seconds: float
    peak_mb: float  # wait4's ru_maxrss: the child's own peak resident memory
    returncode: int
    stdout: str
    stderr: str


def run_measured(args: list[str], cwd=None, env: dict[str, str] | None = None) -> Measured:
    """Run ``args`` to the end; its output goes to temporary files (no pipe to fill)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - start
        out.seek(0), err.seek(0)
        return Measured(seconds, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status),
                        out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def benchmarks_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with the repository on PYTHONPATH: a benchmark's own
    processes (``python -m benchmarks...``) import it from any folder, however it was started."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env
