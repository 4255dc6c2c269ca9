"""benchmarks.main_command times the tutorial's code and rps.run cold and warm (tiny data; no timing asserts)."""

import re

import pytest

from conftest import ROOT, clean_env
from support.commands import run_module

pytestmark = pytest.mark.slow


def test_main_command_benchmark_times_the_tutorial_and_both_runs():
    env = clean_env()  # tiny data
    out = run_module("benchmarks.main_command", cwd=ROOT, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "tiny generated data" in text
    seconds = {}
    for key in ("t", "cold", "warm"):
        match = re.search(rf"round 1 \(\s*{key}\)\s+([\d.]+) s  peak ([\d.]+) GB  test accuracy ([\d.]+)", text)
        assert match, f"missing ({key}):\n{text}"
        seconds[key] = float(match.group(1))
        assert 0 < float(match.group(2)) and 0 <= float(match.group(3)) <= 1
    for key, target in (("cold", 0.5), ("warm", 0.25)):
        ratio = float(re.search(rf"\({key}\) [\d.]+ s = ([\d.]+)x \(t\)  target <= {target}x", text).group(1))
        assert abs(ratio - seconds[key] / seconds["t"]) <= 0.01 + 0.01 * ratio  # the printed ratio is of the printed times
