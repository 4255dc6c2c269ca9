"""The benchmark runs every variant side by side and reports ratios (tiny data; no timing asserts)."""

import re

import pytest

from conftest import ROOT
from support.commands import run_module

pytestmark = pytest.mark.slow
BENCHMARKS = [ROOT]  # the benchmarks live outside the package, in the repository: import them from there


def test_benchmark_reports_every_variant_and_thread_setting(tmp_path):
    # one sweep point: the same code as two; a second point would only add a cache hit, which (c) times
    out = run_module("benchmarks.speed", "--sweep-points", "1", "--uncached-sweep-points", "1", "--threads",
                     "--thread-setting", "1,1", "epochs=1", cwd=tmp_path, path=BENCHMARKS,
                     timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "tiny generated data" in text
    seconds, peaks = {}, []
    for label in ("(a) uncached run", "(b) cached run, cold (XNNPACK)", "(b') cached run, cold (TensorFlow)",
                  "(c) cached run, warm (hit)", "(d) 1-point sweep, cached", "(e) 1-point sweep, uncached"):
        match = re.search(re.escape(label) + r"\s+([\d.]+) s\s+([\d.]+)x \(a\)  peak ([\d.]+) GB", text)
        assert match, f"missing: {label}\n{text}"
        peaks.append(float(match.group(3)))
        seconds[label.split()[0]] = s = float(match.group(1))
        a = seconds["(a)"]  # printed to 0.1 s: the ratio must lie within what that rounding allows
        assert (s - 0.05) / (a + 0.05) - 0.005 <= float(match.group(2)) <= (s + 0.05) / (a - 0.05) + 0.005
    whole = re.search(r"peak memory \(whole benchmark process\): ([\d.]+) GB", text)
    assert whole and 0.1 < min(peaks) and max(peaks) <= float(whole.group(1)), text  # the whole: the runs' highest or more
    assert re.search(r"CPU: .+, \d+ cores, AVX-512 (yes|no);", text), text
    ceiling = re.search(r"forward pass alone .*: ([\d.]+) images/s XNNPACK, ([\d.]+) TensorFlow", text)
    assert ceiling and min(map(float, ceiling.groups())) > 0, text
    rates = re.search(r"feature extraction ([\d.]+) XNNPACK \(b\) vs ([\d.]+) TensorFlow \(b'\): ([\d.]+)x", text)
    assert rates, text
    lite, tf_rate, ratio = map(float, rates.groups())
    assert abs(lite / tf_rate - ratio) <= 0.01 * ratio + 0.005  # the printed ratio is of the printed rates
    assert re.search(r"rps.predict on the 40 test images: [\d.]+ images/s after loading the model \(xnnpack", text)
    rates = re.findall(r"intra_op=(\d) inter_op=(\d): ([\d.]+|failed)", text)
    # one setting: each runs in a process of its own that imports TensorFlow cold (~10 s of CPU)
    assert [r[:2] for r in rates] == [("1", "1")] and all(rate != "failed" for *_, rate in rates), text
    assert not list(tmp_path.iterdir()), "the benchmark cleans up its temporary data and cache"


def test_validation_benchmark_ranks_recipes_and_chooses_on_validation_only(tmp_path):
    # 2 folds, not the default 5: the k-fold mode's runs train one head per fold (20 trainings, not 32)
    out = run_module("benchmarks.validation", "--seeds", "1", "2", "--recipes", "head-2", "head-10-lr1e-4",
                     "--folds", "2", cwd=tmp_path, path=BENCHMARKS, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = {(r, m, int(s)): (float(v), float(loss), float(t)) for r, m, s, v, loss, t in re.findall(
        r"^(\S+)\s+(grouped-2fold|random|grouped)\s+seed (\d): val ([\d.]+) \(loss ([\d.]+)\) test ([\d.]+)",
        out.stdout, re.M)}
    assert len(runs) == 2 * 3 * 2, out.stdout  # recipes x modes x seeds
    refits = {(r, int(s)): float(t) for r, s, t in re.findall(r"^(\S+)\s+refit\s+seed (\d): test ([\d.]+)",
                                                              out.stdout, re.M)}
    for mode in ("random", "grouped", "grouped-2fold"):
        row = re.search(rf"^\| {mode}: chosen recipe's test \(best of any\) \| (.+) \| ([\d.]+) \|$", out.stdout, re.M)
        assert row, out.stdout
        for seed, cell in zip((1, 2), row.group(1).split(" | ")):
            recipe, test, best = re.fullmatch(r"(\S+) ([\d.]+) \(([\d.]+)\)", cell).groups()
            candidates = {r: v for (r, m, s), v in runs.items() if m == mode and s == seed}
            # chosen as sweeps choose: highest validation accuracy, then lowest validation loss
            assert recipe == min(candidates, key=lambda r: (-candidates[r][0], candidates[r][1]))
            assert float(test) == round(candidates[recipe][2], 3)
            assert float(best) == round(max(v[2] for v in candidates.values()), 3)
            refit = re.search(rf"^\| {mode}: chosen recipe refitted with validation's images, test \| (.+) \| [\d.]+ \|$",
                              out.stdout, re.M).group(1).split(" | ")[seed - 1]
            assert float(refit) == round(refits[recipe, seed], 3), "the refit of the recipe this mode chose"
    assert not list(tmp_path.iterdir()), "the benchmark cleans up its temporary data and cache"


def test_groups_benchmark_reports_every_grouping_and_groups_per_class(tmp_path):
    # head-2, not the default head-10: what is checked (groups, carve-outs, the table) does not depend on epochs
    out = run_module("benchmarks.groups", "--groups", "3", "8", "--seeds", "0", "1", "--recipe", "head-2",
                     cwd=tmp_path, path=BENCHMARKS, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = {(kind, int(k), int(s)): (float(v), float(t)) for kind, k, s, v, t in re.findall(
        r"^(backbone|colour|mix)\s+(\d) groups seed (\d): val ([\d.]+) test ([\d.]+) carve-out [\d.]+ \(\d\) whole True$",
        out.stdout, re.M)}
    assert len(runs) == 3 * 2 * 2, out.stdout  # groupings x groups per class x seeds, every carve-out whole
    for kind in ("backbone", "colour", "mix"):
        for k in (3, 8):
            cells = re.search(rf"^\| {kind} \| {k} \| ([^|]+) \| ([^|]+) \|$", out.stdout, re.M)
            assert cells, out.stdout
            for seed, cell in enumerate(cells.groups()):
                val, test, gap = map(float, cell.split(" / "))
                assert (val, test) == tuple(round(x, 3) for x in runs[kind, k, seed])
                assert gap == pytest.approx(abs(runs[kind, k, seed][0] - runs[kind, k, seed][1]), abs=1.5e-3)
            summary = re.search(rf"^\| {kind} \| {k} \| [\d.]+ \([\d.]+\) \|.* \| yes \| yes \| yes \({k}\) \| (.+) \|$",
                                out.stdout, re.M)
            assert summary, out.stdout  # whole groups, the same groups for both seeds, disjoint carve-outs
            ari = summary.group(1)
            assert ari == "n/a" if kind == "backbone" else re.fullmatch(r"rock -?[\d.]+, paper -?[\d.]+, scissors -?[\d.]+", ari)
    assert "Nothing is chosen here" in out.stdout
    assert not list(tmp_path.iterdir()), "the benchmark cleans up its temporary data and cache"
