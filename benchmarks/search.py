"""Benchmark: an Optuna study against the 9-point dropout x lr grid, in one run, on validation.

    TFDS_DATA_DIR=../shared/offline/tfds TFHUB_CACHE_DIR=../shared/offline/tfhub python -m benchmarks.search
    python -m benchmarks.search --trials 4 --grid head.dropout=0.2,0.5 optimizer.lr=1e-2   # smaller, quicker

Runs both as a user would, each a command in its own process, in a temporary folder with its own
tracking store, on the same split and epochs (those of ``+experiment=search_head``: the official
split, 10 epochs), after one untimed run that fills the feature cache they share:

  (g) python -m rps.run -m +experiment=sweep_dropout_lr split=official epochs=10   (Hydra's grid)
  (s) python -m rps.tune +experiment=search_head                                    (TPE, 30 trials)

Prints each one's wall time and the validation accuracy of the run it chose (the test accuracy of
that run is printed too, reported only), and whether the search matched the grid.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rps.synthetic import mirrors_in_env, tiny_mirrors


def _parent(cwd: Path, experiment: str):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], "tags.sweep = 'parent'")
    return runs[0]


def _timed(command: list[str], cwd: Path) -> float:
    start = time.monotonic()
    out = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if out.returncode not in (0, 1):  # 1: some jobs failed; the summary still stands
        raise RuntimeError(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}")
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, help="trials of the study (default: the experiment's, 30)")
    parser.add_argument("--grid", nargs="+", help="the grid's sweep (default: sweep_dropout_lr's 3 x 3)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both, e.g. epochs=5")
    args = parser.parse_args(argv)
    real = mirrors_in_env()
    with tempfile.TemporaryDirectory(prefix="rps-bench-search-") as tmp:
        tmp = Path(tmp)
        overrides = list(args.overrides)
        if not real:
            overrides = ["split.val_size=30", "batch_size=32"] + overrides
            tiny_mirrors(tmp)  # sets TFDS_DATA_DIR / TFHUB_CACHE_DIR for the commands below
        os.environ.setdefault("XDG_CACHE_HOME", str(tmp / "cache"))
        common = ["split=official", "epochs=10", *overrides]
        run = [sys.executable, "-m", "rps.run"]
        _timed([*run, *common, "experiment_name=warmup"], tmp)  # fills the feature cache for both
        grid_args = ["-m", "+experiment=sweep_dropout_lr", *(args.grid or []), *common, "experiment_name=grid"]
        grid_s = _timed([*run, *grid_args], tmp)
        search_args = ["+experiment=search_head", *common] + ([f"search.trials={args.trials}"] if args.trials else [])
        search_s = _timed([sys.executable, "-m", "rps.tune", *search_args], tmp)
        grid, search = _parent(tmp, "grid"), _parent(tmp, "search_head")
        g_val, s_val = grid.data.metrics["selection_val_accuracy"], search.data.metrics["selection_val_accuracy"]
        print(f"rps search benchmark: {'REAL mirrors' if real else 'tiny generated data'}; {' '.join(common)}")
        for label, seconds, parent in (("(g) grid, " + grid.data.tags["sweep.keys"], grid_s, grid),
                                       ("(s) Optuna study", search_s, search)):
            n = int(parent.data.metrics.get("n_children", 0) or sum(
                parent.data.metrics.get(k, 0) for k in ("n_complete", "n_pruned", "n_fail")))
            print(f"  {label:<44}{n:3d} runs {seconds:8.1f} s  chosen val accuracy "
                  f"{parent.data.metrics['selection_val_accuracy']:.4f} (its test accuracy, reported only: "
                  f"{parent.data.metrics.get('chosen_test_accuracy', float('nan')):.4f})")
        print(f"  study / grid wall time: {search_s / grid_s:.2f}x;  study's val accuracy >= grid's: "
              f"{'PASS' if s_val >= g_val else 'FAIL'} ({s_val:.4f} vs {g_val:.4f})")


if __name__ == "__main__":
    from rps.common.quiet import quiet_tensorflow_startup

    quiet_tensorflow_startup()
    main()
