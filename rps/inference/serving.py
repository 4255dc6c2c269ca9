"""Serving a verified local model with MLflow's own scoring server (``mlflow models serve``).

rps adds no server of its own: it runs ``<this Python> -m mlflow models serve -m <folder>
--env-manager local`` on a folder rps.tracking.models has downloaded and checked, with this
Python's ``bin`` folder first on the child's PATH (MLflow starts ``uvicorn`` by name, which an
unactivated virtual environment would not find) and the pixel limit in ``$RPS_MAX_PIXELS``, where
the served model (rps.inference.classifier.RpsModel) reads it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from rps.common.errors import ResourceError
from rps.inference.classifier import MAX_PIXELS_ENV


def check_servable(folder: Path) -> None:
    """``mlflow models serve`` takes an MLflow model folder logged by rps, not a bare SavedModel."""
    if not (folder / "MLmodel").is_file():
        raise ResourceError(f"{folder} is not an MLflow model folder (no MLmodel): serve a logged model "
                            "(runs:/<run id>, models:/<name>/<version>) or a folder downloaded from one.")
    if not (folder / "artifacts" / "saved_model").is_dir():
        raise ResourceError(f"The MLflow model {folder} was not logged by rps (no artifacts/saved_model inside).")


def check_port(host: str, port: int) -> None:
    """Fail in a second, not after the model has loaded, when the address cannot be listened on."""
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as err:
        raise ResourceError(f"Cannot listen on {host}:{port} ({err.strerror or err}): another program uses that port, "
                            "or the address is not this machine's. Choose another with --port / --host.") from None


def serve_command(folder: Path, host: str, port: int, workers: int = 1) -> list[str]:
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(folder), "--env-manager", "local",
            "-h", host, "-p", str(port), "-w", str(workers)]


def serve_env(max_pixels: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: ``base`` (this process's), this Python's bin folder first on PATH, the pixel limit."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
    env[MAX_PIXELS_ENV] = str(max_pixels)
    return env


def serve(folder: Path, host: str, port: int, max_pixels: int, workers: int = 1) -> int:
    """Run MLflow's scoring server on ``folder`` until it exits or this process is interrupted
    (Ctrl-C, SIGTERM: the server and its workers are stopped too); returns its exit code."""
    check_servable(folder)
    server = subprocess.Popen(serve_command(folder, host, port, workers), env=serve_env(max_pixels),
                              start_new_session=True)  # its own group: stopped with its uvicorn workers
    try:
        return server.wait()
    except KeyboardInterrupt:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        raise
