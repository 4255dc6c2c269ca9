"""benchmarks.finetune runs both fine-tuning paths side by side (tiny data; no timing asserts)."""

import re

import pytest

from conftest import ROOT, clean_env
from support.commands import run_module

pytestmark = pytest.mark.slow


def test_benchmark_runs_both_paths_for_a_seed_and_summarizes(tmp_path):
    env = clean_env()
    out = run_module("benchmarks.finetune", "--seeds", "1", cwd=ROOT, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "tiny generated data" in text
    for key in ("(a) images (today)", "(b) cached, cold", "(c) cached, warm"):
        assert re.search(re.escape(f"seed 1 {key}") + r"\s+[\d.]+ s  fine-tuning epochs [\d.]+ / [\d.]+ s", text), text
    assert "(b)/(c) path: on: activations below the cut (block_11_add" in text
    assert re.search(r"\(c\) cached, warm .* activation cache hit", text), "the warm run hit every entry"
    assert re.search(r"\(b\) cached, cold .* activation cache built", text)
    assert re.search(r"fine-tuning epoch, \(a\) / cached: [\d.]+x faster", text)
    assert re.search(r"whole process [\d.]+ GB", text)
