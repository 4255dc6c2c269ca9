"""How tests start rps's commands: `python -m <module> <args>`, forked from a warm process.

A command of rps spends ~8 of a tiny run's ~12 s importing TensorFlow, MLflow and Hydra
(docs/testing.md), and the suite runs over a hundred commands. So :func:`run_module` starts them
from :mod:`multiprocessing`'s fork server, which imports those libraries once (``PRELOAD``) and
forks a child per command. The child then does what ``python -m`` does: the test's environment,
working directory, ``sys.argv`` and stdout/stderr; the module run as ``__main__``; non-daemon
threads joined and ``atexit`` handlers run on the way out; the same exit status, including death
by an unhandled Ctrl-C. Signals, exit codes, what the command prints, the processes it starts and
the files and runs it leaves are the real command's.

What a warm child cannot show is what happens *while the libraries import*: a command whose
environment sets an import-time variable (``IMPORT_TIME``: TensorFlow's log level, thread and
allocator settings, ``PYTHONPATH``...) differently from the fork server runs as a real subprocess,
and so does every call with ``cold=True`` (the tests of start-up output, of peak memory, of the
installed entry points). ``RPS_TEST_COLD=1`` runs every command cold.
"""

from __future__ import annotations

import functools
import importlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

# What the shell running pytest may have set that changes what rps does or prints: tests build their own.
INHERITED = ("MLFLOW_", "TFDS_", "TFHUB_", "TF_CPP_MIN_LOG_LEVEL", "RPS_TF_LOG_LEVEL", "RPS_QUIET_FILTER", "RPS_VERBOSE")
# Imported once by the fork server: what the commands import that costs seconds; last,
# support.warm_server (what they import lazily, then gc.freeze(): see that module).
PRELOAD = ["rps", "tensorflow", "tf_keras", "tensorflow_hub", "tensorflow_datasets", "mlflow",
           "mlflow.store.tracking.sqlalchemy_store", "hydra", "omegaconf", "matplotlib", "matplotlib.pyplot",
           "support.warm_server"]
# Variables read while those libraries import (or by rps/__init__.py before them).
IMPORT_TIME = ("TF_", "RPS_VERBOSE", "RPS_TF_LOG_LEVEL", "PYTHON", "MPL", "OMP_", "KMP_", "CUDA", "XLA_", "LD_", "MALLOC", "OPENBLAS", "MKL")
# Read later, or by the child itself; or set by joblib and scikit-learn when a test process imports
# them (for Intel's OpenMP runtime, which none of the preloaded libraries loads).
RUNTIME_ONLY = ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "RPS_QUIET_FILTER", "KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK")


def clean_env() -> dict[str, str]:
    """The environment a command of a test runs in, whatever the shell running pytest has set
    (a TF log level, a tracking URI, an unactivated venv): this interpreter's bin/ first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED)}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _import_time(env: dict[str, str]) -> dict[str, str]:
    """The variables of ``env`` that act while importing, as rps/__init__.py reads them (a
    TF_CPP_MIN_LOG_LEVEL equal to RPS_TF_LOG_LEVEL is the level rps set itself: as if unset)."""
    found = {k: v for k, v in env.items() if k.startswith(IMPORT_TIME) and k not in RUNTIME_ONLY}
    if found.get("TF_CPP_MIN_LOG_LEVEL") == found.get("RPS_TF_LOG_LEVEL"):
        found.pop("TF_CPP_MIN_LOG_LEVEL", None), found.pop("RPS_TF_LOG_LEVEL", None)
    return found


_SERVER_ENV = clean_env()


@functools.cache
def _fresh_sys_path() -> tuple[str, ...]:
    """The module search path of a fresh interpreter, without its first entry (the script's
    folder, or the working directory for ``-m``): not the test process's, which tests change
    (pytest's rootdir, a logged model's code folder that MLflow puts first when loading it)."""
    out = subprocess.run([sys.executable, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"],
                         env=_SERVER_ENV, capture_output=True, text=True, check=True)
    return tuple(json.loads(out.stdout))


@functools.cache
def _server():
    """This test process's fork server (started on first use, in the clean environment)."""
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    before = dict(os.environ)
    os.environ.clear()
    # It starts as a fresh interpreter with this environment, and imports from the path that gives
    # it (Python 3.10-3.13 pass it this process's sys.path but do not apply it): PYTHONPATH adds
    # support/ for support.warm_server. Each child sets its own path (_child).
    os.environ.update(_SERVER_ENV | {"PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        forkserver.ensure_running()
    finally:
        os.environ.clear()
        os.environ.update(before)
    return context


def _exit_code(exit_: SystemExit) -> int:
    """The status an interpreter exits with for ``exit_`` (printing a non-integer code)."""
    if exit_.code is None:
        return 0
    if isinstance(exit_.code, int):
        return exit_.code
    print(exit_.code, file=sys.stderr)
    return 1


def _as_main_process() -> None:
    """Look like an interpreter's first process to what the command runs (launchers, Ray, joblib)."""
    import itertools
    from multiprocessing import process

    main = process._current_process
    main._identity, main._name, main._parent_pid, main._popen = (), "MainProcess", None, None
    main._config = {**main._config, "authkey": process.AuthenticationString(os.urandom(32))}
    process._parent_process = None
    process._children = set()
    process._process_counter = itertools.count(1)


def _child(module: str, args: list[str], cwd: str, env: dict[str, str], path: tuple[str, ...], out: str, err: str,
           ignore_sigint: bool) -> None:
    """In the forked child: become `python -m module args`, and exit as it would."""
    import atexit
    import io
    import runpy
    import threading
    import traceback

    for fd, file in ((1, out), (2, err)):
        target = os.open(file, os.O_WRONLY | os.O_APPEND)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), line_buffering=True, errors="backslashreplace")
    _as_main_process()
    if ignore_sigint:  # as a shell starts a background job
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.path[:] = [cwd, *path]  # as `python -m` has it (not the test process's, which multiprocessing passes)
    importlib.reload(sys.modules["rps"])  # its environment defaults, from this command's environment
    sys.argv = [module, *args]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = _exit_code(exit_)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:  # noqa: BLE001  (the interpreter prints it and exits 1)
        traceback.print_exc()
        code = 1
    threading._shutdown()  # join non-daemon threads, as the interpreter does before atexit
    atexit._run_exitfuncs()
    sys.stdout.flush(), sys.stderr.flush()
    if code < 0:  # die of the signal, as an interpreter with an unhandled KeyboardInterrupt does
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


class Command:
    """A started command, with the part of :class:`subprocess.Popen`'s interface the tests use
    (``pid``, ``poll``, ``wait``, ``communicate``, ``send_signal``, ``kill``, ``returncode``);
    stdout and stderr are captured to files and returned as text by :meth:`communicate`."""

    def __init__(self, module: str, args: tuple[str, ...], cwd: Path | str, env: dict[str, str], ignore_sigint: bool,
                 path: tuple[str, ...] = ()):
        self.args = [sys.executable, "-m", module, *args]
        self._folder = tempfile.TemporaryDirectory(prefix="rps-command-")
        self._out, self._err = Path(self._folder.name, "stdout"), Path(self._folder.name, "stderr")
        self._out.touch(), self._err.touch()
        self._process = _server().Process(target=_child, args=(
            module, list(args), str(cwd), dict(env), (*path, *_fresh_sys_path()), str(self._out), str(self._err),
            ignore_sigint))
        self._process.start()
        self.pid = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout, self._out.read_bytes(), self._err.read_bytes())
        return self._out.read_text(errors="replace"), self._err.read_text(errors="replace")

    def send_signal(self, signum: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        if self._process.exitcode is None:
            self._process.kill()
            self._process.join()


def start_module(module: str, *args: str, cwd: Path | str, env: dict[str, str] | None = None,
                 ignore_sigint: bool = False, path: Sequence[Path | str] = ()) -> Command | subprocess.Popen:
    """`python -m module args` started in ``cwd`` (forked warm as :func:`run_module` decides), its
    output captured; ``ignore_sigint`` starts it with SIGINT ignored, as a shell starts background jobs."""
    env = clean_env() if env is None else env
    if _cold(env):
        preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
        return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=_with_path(env, path),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)
    return Command(module, args, cwd, env, ignore_sigint, tuple(map(str, path)))


def _with_path(env: dict[str, str], path: Sequence[Path | str]) -> dict[str, str]:
    """``env`` with ``path`` first on its PYTHONPATH (what the warm child puts on its sys.path)."""
    if not path:
        return env
    return env | {"PYTHONPATH": os.pathsep.join([*map(str, path), *filter(None, [env.get("PYTHONPATH")])])}


def _cold(env: dict[str, str], cold: bool = False) -> bool:
    """Whether a command must start as a real subprocess (see the module's docstring); one that
    must because of its environment says which variables, as a warning in pytest's summary (an
    environment copied from a test process that an in-process test changed: use clean_env)."""
    if cold or os.environ.get("RPS_TEST_COLD") == "1":
        return True
    mine, server = _import_time(env), _import_time(_SERVER_ENV)
    if mine == server:
        return False
    differ = sorted(k for k in {*mine, *server} if mine.get(k) != server.get(k))
    warnings.warn(f"a command started cold: its {', '.join(differ)} differ from the warm fork server's", stacklevel=3)
    return True


def run_module(module: str, *args: str, cwd: Path | str, env: dict[str, str] | None = None,
               timeout: float = 600, cold: bool = False, path: Sequence[Path | str] = ()) -> subprocess.CompletedProcess:
    """`python -m module args` in ``cwd`` with ``env`` (default: :func:`clean_env`), returned as
    ``subprocess.run(..., capture_output=True, text=True)`` returns it; forked from the warm fork
    server unless ``cold``, ``RPS_TEST_COLD=1`` or an import-time variable differs from its.
    ``path``: folders to import from, as PYTHONPATH would add them (without making the command cold)."""
    env = clean_env() if env is None else env
    if _cold(env, cold):
        return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=_with_path(env, path),
                              capture_output=True, text=True, timeout=timeout)
    command = Command(module, args, cwd, env, ignore_sigint=False, path=tuple(map(str, path)))
    try:
        out, err = command.communicate(timeout)
    except subprocess.TimeoutExpired:
        command.kill()
        raise
    return subprocess.CompletedProcess(command.args, command.returncode, out, err)
