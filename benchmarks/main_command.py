"""Benchmark: the main command, cold and warm, against the reference tutorial's code.

    TFDS_DATA_DIR=../shared/offline/tfds TFHUB_CACHE_DIR=../shared/offline/tfhub python -m benchmarks.main_command
    python -m benchmarks.main_command                 # tiny generated data (a smoke run; CI)

Each round runs three commands, each a fresh process in a scratch folder of its own: (t) the
tutorial's code (``python -m benchmarks.tutorial``), (cold) ``python -m rps.run epochs=2
batch_size=64`` with an empty rps cache (features computed, the backbone's TFLite conversion
made) and a new tracking store, and (warm) the same command again in the same folder, on that
cache. Wall time
includes everything a user waits for: imports, loading, training, evaluation, MLflow logging
and the model export. Prints each command's wall time, peak memory (the process's own) and test
accuracy (reported only; the tutorial's is inflated by its leak), and the ratios to (t) with the
targets of issue 23 (cold <= 0.5x, warm <= 0.25x).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.processes import Measured, benchmarks_env, run_measured
from rps.synthetic import mirrors_in_env, tiny_mirrors

TARGETS = {"cold": 0.5, "warm": 0.25}  # wall time relative to the tutorial's code
ACCURACY = re.compile(r"test accuracy ([\d.]+)")


def _mirrors(root: Path) -> tuple[list[str], list[str], str]:
    """(rps overrides, tutorial arguments, what data) for the mirrors in the environment, or for
    tiny generated data when they are not both set."""
    if mirrors_in_env():
        return [], [], f"mirrors: TFDS_DATA_DIR={os.environ['TFDS_DATA_DIR']} TFHUB_CACHE_DIR={os.environ['TFHUB_CACHE_DIR']}"
    return tiny_mirrors(root), ["--val", "60", "--test", "40"], "tiny generated data (fixed overheads dominate)"


def _run(label: str, args: list[str], cwd: Path, env: dict[str, str]) -> Measured:
    cwd.mkdir(parents=True, exist_ok=True)
    run = run_measured([sys.executable, *args], cwd=cwd, env=env)
    if run.returncode != 0:
        raise SystemExit(f"{label} failed ({run.returncode}):\n{run.stderr[-3000:]}")
    return run


def _accuracy(run: Measured) -> str:
    found = ACCURACY.findall(run.stdout + run.stderr)
    return found[-1] if found else "?"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds of (t), cold, warm (default 1); medians")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for rps.run (default: none)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="rps-main-command-") as scratch:
        root = Path(scratch)
        overrides, tutorial_args, data = _mirrors(root / "data")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        for var in ("TFDS_DATA_DIR", "TFHUB_CACHE_DIR"):  # each command runs in a folder of its own
            if env.get(var):
                env[var] = str(Path(env[var]).resolve())
        env = benchmarks_env(env)  # benchmarks.tutorial, from any folder
        command = ["-m", "rps.run", "epochs=2", "batch_size=64", *overrides, *args.overrides]
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}; "
              f"{data}")
        print(f"(t) python -m benchmarks.tutorial {' '.join(tutorial_args)}\n(cold)/(warm) python {' '.join(command)}")
        seconds: dict[str, list[float]] = {"t": [], "cold": [], "warm": []}
        for r in range(args.rounds):
            here = root / f"round{r}"
            cache = {**env, "XDG_CACHE_HOME": str(here / "cache")}  # empty: nothing of rps's cached yet
            runs = {"t": _run("(t)", ["-m", "benchmarks.tutorial", "--out", str(here / "t"), *tutorial_args],
                              here / "t", env),
                    "cold": _run("(cold)", command, here / "rps", cache),
                    "warm": _run("(warm)", command, here / "rps", cache)}  # again, in the same folder
            for key, run in runs.items():
                seconds[key].append(run.seconds)
                print(f"round {r + 1} ({key:>4}) {run.seconds:7.1f} s  peak {run.peak_mb / 1024:.2f} GB  "
                      f"test accuracy {_accuracy(run)}")
        tutorial = statistics.median(seconds["t"])
        print(f"\nmedian of {args.rounds} round(s): (t) {tutorial:.1f} s")
        for key, target in TARGETS.items():
            ratio = statistics.median(seconds[key]) / tutorial
            print(f"({key}) {statistics.median(seconds[key]):.1f} s = {ratio:.2f}x (t)  target <= {target}x: "
                  f"{'met' if ratio <= target else 'not met'}")


if __name__ == "__main__":
    main()
