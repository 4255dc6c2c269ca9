"""Quiet by default, loud when asked: what the commands print is what a user can act on.

Importing TensorFlow on a machine without a GPU prints lines such as ``E0000 ... failed call to
cuInit: ... CUDA error`` and ``I0000 ... oneDNN custom operations are on`` that no setting
silences (they are logged before TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL``) and that read like
failures. The command-line entry points route their stderr through ``grep -v`` of exactly those
lines (a separate process, in its own session, so a crash or Ctrl-C of rps loses nothing it
printed); every other line, real errors included, passes. Library INFO lines a user cannot act
on (MLflow creating its tables, matplotlib building its font cache) are kept below WARNING.

Loud when asked: ``-v`` (``--verbose``) on ``rps.run``/``rps.tune``, ``hydra.verbose=true``, or
``RPS_VERBOSE=1`` turn all of that off. A ``TF_CPP_MIN_LOG_LEVEL`` the user set is respected: 2
or 3 keeps the filter (quieter, never noisier); 0 or 1 asks for TensorFlow's own output, unfiltered.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import subprocess
import sys
from typing import Callable

NOISE = "|".join((
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    r"cudart_stub\.cc:[0-9]+\] Could not find cuda drivers",
    r"cuda_platform\.cc:[0-9]+\] failed call to cuInit",
    r"cuda_executor\.cc:[0-9]+\] .*(CUDA|cuInit)",
    r"port\.cc:[0-9]+\] oneDNN custom operations are on",
    r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$",
    r"^Registered model '.*' already exists\. Creating a new version of this model\.\.\.$",  # (the next line says which)
    r"^fully_quantize: [0-9], inference_type: [0-9]+, input_inference_type: ",  # the int8 converter
))
VERBOSE_ENV = "RPS_VERBOSE"  # "1": show everything (set by -v / hydra.verbose, inherited by a sweep's jobs)
VERBOSE_FLAGS = ("-v", "--verbose")
# Loggers whose INFO lines say nothing a user can act on (shown again when verbose).
QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic", "matplotlib", "matplotlib.font_manager")


def verbose() -> bool:
    """Whether the user asked to see everything."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def _hydra_verbose(arg: str) -> bool:
    key, _, value = arg.partition("=")
    return key == "hydra.verbose" and value.strip().lower() not in ("false", "null", "none", "[]", "")


def take_verbose_flag(argv: list[str], hydra_command: bool) -> list[str]:
    """``argv`` with ``-v``/``--verbose`` turned into ``hydra.verbose=true`` (Hydra's own spelling)
    for a Hydra command; sets :data:`VERBOSE_ENV` when either asks for everything."""
    wanted = [a for a in argv[1:] if a in VERBOSE_FLAGS or _hydra_verbose(a)]
    if not wanted:
        return argv
    os.environ[VERBOSE_ENV] = "1"
    if not hydra_command:
        return argv
    rest = [a for a in argv[1:] if a not in VERBOSE_FLAGS]
    if not any(_hydra_verbose(a) for a in rest):
        rest.append("hydra.verbose=true")
    return [argv[0], *rest]


def tensorflow_level() -> str:
    """The ``TF_CPP_MIN_LOG_LEVEL`` to run with: the user's, else 2 (0 when verbose)."""
    import rps

    return rps.USER_TF_LOG_LEVEL or ("0" if verbose() else "2")


def filter_wanted() -> bool:
    """Filter TensorFlow's start-up chatter unless verbose or the user asked for TF's INFO lines."""
    return not verbose() and tensorflow_level() in ("2", "3")


def quiet_libraries() -> None:
    """Keep :data:`QUIET_LOGGERS` below WARNING (unless verbose)."""
    if not verbose():
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def quiet_tensorflow_startup() -> None:
    """At a command's start: read ``-v``, set TensorFlow's log level (TensorFlow is not imported
    yet), quiet the libraries and filter :data:`NOISE` out of this process's stderr (fd 2)."""
    sys.argv[:] = take_verbose_flag(sys.argv, hydra_command="hydra" in sys.modules)
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ["RPS_TF_LOG_LEVEL"] = tensorflow_level()
    quiet_libraries()
    grep = shutil.which("grep")
    if not filter_wanted() or grep is None or os.environ.get("RPS_QUIET_FILTER") == str(os.getpid()):
        return
    read, write = os.pipe()
    original = os.dup(2)
    grep_proc = subprocess.Popen([grep, "--line-buffered", "-v", "-E", NOISE], stdin=read, stdout=original,
                                 stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    os.close(read)
    sys.stderr.flush()
    os.dup2(write, 2)
    os.close(write)
    os.environ["RPS_QUIET_FILTER"] = str(os.getpid())

    def drain() -> None:  # at exit: let the filter print everything before the shell's prompt returns
        sys.stderr.flush()
        os.dup2(original, 2)  # closes this process's end of the pipe
        try:
            grep_proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # a child process still holds the pipe: it prints later
            pass

    atexit.register(drain)


def info_logging() -> None:
    """A run's INFO lines as ``python -m rps.run`` prints them (Hydra's format), for the commands
    that run one without Hydra's logging config (rps.reproduce, rps.refit); absl and TensorFlow
    stay at warnings, as there."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    for chatty in ("absl", "tensorflow"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


def run_tool(main: Callable[[], int]) -> None:
    """How rps.reproduce, rps.refit and rps.ensemble start: TensorFlow's start-up quiet, a run's INFO
    lines, Ctrl-C / SIGTERM as KeyboardInterrupt (the run is then marked KILLED), ``main()``'s
    return value as the exit code."""
    from rps.common.errors import interrupt_on_signals

    quiet_tensorflow_startup()
    info_logging()
    interrupt_on_signals()
    sys.exit(main())


def run_command(main: Callable[[], int]) -> None:
    """How a non-Hydra command starts: files private to its user, TensorFlow's start-up quiet,
    ``main()``'s return value as the exit code."""
    from rps.common.files import private_files

    private_files()
    quiet_tensorflow_startup()
    sys.exit(main())
