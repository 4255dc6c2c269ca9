"""Quiet start: TensorFlow's start-up chatter on CPU machines, filtered out of the CLIs' stderr.

Importing TensorFlow on a machine without a GPU prints lines such as ``E0000 ... failed call to
cuInit: ... CUDA error`` that no setting silences (they are logged before TensorFlow reads
``TF_CPP_MIN_LOG_LEVEL``) and that read like failures. The command-line entry points route their
stderr through ``grep -v`` of exactly those lines (a separate process, in its own session, so a
crash or Ctrl-C of rps loses nothing it printed); every other line, real errors included, passes.
A user who sets ``TF_CPP_MIN_LOG_LEVEL`` themselves gets TensorFlow's output untouched.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys

NOISE = "|".join((
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    r"cudart_stub\.cc:[0-9]+\] Could not find cuda drivers",
    r"cuda_platform\.cc:[0-9]+\] failed call to cuInit",
    r"cuda_executor\.cc:[0-9]+\] .*(CUDA|cuInit)",
    r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$",
    r"^fully_quantize: [0-9], inference_type: [0-9]+, input_inference_type: ",  # the int8 converter
))


def quiet_tensorflow_startup() -> None:
    """Filter :data:`NOISE` out of this process's stderr (fd 2), unless the user asked for TF's logs."""
    import rps

    grep = shutil.which("grep")
    if rps.USER_TF_LOG_LEVEL or grep is None or os.environ.get("RPS_QUIET_FILTER") == str(os.getpid()):
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
