"""Quiet by default, loud when asked: progress a log can read, TensorFlow's start-up chatter
filtered unless the user asks for it, and a user's own TF log level never makes rps noisier."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import pytest

from conftest import clean_env
from rps.common.progress import Progress
from rps.common.quiet import take_verbose_flag

PROBE = ("cuInit", "cuda drivers", "oneDNN custom operations", "absl::InitializeLog")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_in_a_log_is_a_line_per_tenth_and_in_a_terminal_a_bar(caplog):
    log = logging.getLogger("progress-test")
    caplog.set_level(logging.INFO, "progress-test")
    stream = io.StringIO()
    progress = Progress(1000, "image", log, stream=stream)
    for done in range(10, 1001, 10):
        progress.update(done)
    assert stream.getvalue() == ""  # nothing redrawn in place into a log
    assert [r.getMessage().split(" ")[0] for r in caplog.records] == [f"{n}/1000" for n in range(100, 1000, 100)]
    terminal = Terminal()
    bar = Progress(1000, "image", log, stream=terminal)
    for done in (500, 1000):
        bar.update(done)
    assert terminal.getvalue().count("\r") == 2 and terminal.getvalue().endswith("\n")


def test_dash_v_becomes_hydras_verbose_flag(monkeypatch):
    monkeypatch.delenv("RPS_VERBOSE", raising=False)
    assert take_verbose_flag(["run", "epochs=1"], hydra_command=True) == ["run", "epochs=1"]
    assert "RPS_VERBOSE" not in os.environ
    assert take_verbose_flag(["run", "-v", "epochs=1"], hydra_command=True) == ["run", "epochs=1", "hydra.verbose=true"]
    assert os.environ["RPS_VERBOSE"] == "1"
    monkeypatch.delenv("RPS_VERBOSE")
    assert take_verbose_flag(["run", "hydra.verbose=[rps]"], hydra_command=True) == ["run", "hydra.verbose=[rps]"]
    assert os.environ["RPS_VERBOSE"] == "1"
    monkeypatch.delenv("RPS_VERBOSE")
    take_verbose_flag(["run", "hydra.verbose=false"], hydra_command=True)
    assert "RPS_VERBOSE" not in os.environ


STARTUP = "import rps; from rps.common.quiet import quiet_tensorflow_startup; quiet_tensorflow_startup(); import tensorflow"


@pytest.mark.slow
@pytest.mark.parametrize("level, args, loud", [("3", [], False), ("2", [], False), ("", ["-v"], True)])
def test_tensorflow_start_up_is_quiet_unless_asked(level, args, loud):
    """A command's start: TensorFlow's CUDA probe and oneDNN lines are filtered, also when the
    user set TF_CPP_MIN_LOG_LEVEL to 2 or 3; ``-v`` shows them. The default level is checked on a
    real command: test_e2e's cold plain run, which prints none of PROBE and only allowed lines."""
    env = clean_env() | ({"TF_CPP_MIN_LOG_LEVEL": level} if level else {})
    out = subprocess.run([sys.executable, "-c", STARTUP, *args], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    shown = [noise for noise in PROBE if noise in out.stderr + out.stdout]
    assert bool(shown) == loud, (shown, out.stderr[-2000:])
