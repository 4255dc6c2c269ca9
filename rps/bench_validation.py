"""Does validation predict the official test? Random vs grouped validation, over many recipes.

    TFDS_DATA_DIR=../shared/offline/tfds TFHUB_CACHE_DIR=../shared/offline/tfhub python -m rps.bench_validation
    python -m rps.bench_validation --seeds 1 2 --recipes head-2 head-30 finetune   # a subset

For every recipe (frozen heads with different regularization and epochs, fine-tuning variants),
every seed and both validation modes — ``random`` (a random 10% of the training images) and
``grouped`` (whole clusters of similar frames, ``split.group_by=clusters``) — it trains on the
official split and records the validation accuracy a run is chosen by and the official test
accuracy. Then, per seed and mode, the Spearman rank correlation between them across recipes:
the higher, the better validation tells recipes apart the way unseen hands do. Runs in one
process through ``rps.pipeline`` (no MLflow), on the feature cache where it applies.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import replace

import rps  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

# name -> overrides (all on split=official)
RECIPES = {
    "head-2": ["epochs=2"],
    "head-10": ["epochs=10"],
    "head-30": ["epochs=30"],
    "head-10-lr1e-2": ["epochs=10", "optimizer.lr=0.01"],
    "head-10-lr1e-4": ["epochs=10", "optimizer.lr=0.0001"],
    "head-10-dropout0.8": ["epochs=10", "head.dropout=0.8"],
    "head-256-ls-l2-30": ["epochs=30", "head.hidden_units=256", "label_smoothing=0.1", "head.l2=0.0001"],
    "head-cosine-l2-20": ["epochs=20", "optimizer.schedule=cosine", "head.l2=0.001"],
    "finetune": ["epochs=5", "backbone.trainable=true", "backbone.fine_tune_epochs=2", "optimizer.fine_tune_lr=3e-5",
                 "augment=basic", "augment.head_phase=false"],
    "finetune-strong": ["epochs=5", "backbone.trainable=true", "backbone.fine_tune_epochs=2",
                        "optimizer.fine_tune_lr=3e-5", "augment=strong", "augment.head_phase=false"],
}
MODES = {"random": ["split.group_by=none"], "grouped": ["split.group_by=clusters", "split.groups=5"]}


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (nan when either side is constant: validation that cannot rank)."""
    from scipy.stats import spearmanr

    if len(set(a)) < 2 or len(set(b)) < 2:
        return math.nan
    return float(spearmanr(a, b).statistic)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args(argv)
    from rps.bench import _compose, _tiny_mirrors
    from rps.pipeline import prepare, train_and_evaluate
    from rps.report import Reporter

    real = bool(os.environ.get("TFDS_DATA_DIR") and os.environ.get("TFHUB_CACHE_DIR"))
    extra = [] if real else ["split.val_size=30", "batch_size=32"]
    if not real:
        import tempfile
        from pathlib import Path

        _tiny_mirrors(Path(tempfile.mkdtemp(prefix="rps-bench-validation-")))
    base = ["split=official", *extra, *args.overrides]
    prepared = prepare(_compose(base))
    results: dict[tuple[str, str, int], tuple[float, float, float]] = {}
    for recipe in args.recipes:
        for mode, mode_overrides in MODES.items():
            for seed in args.seeds:
                cfg = _compose(base + RECIPES[recipe] + mode_overrides + [f"seed={seed}"])
                start = time.monotonic()
                out = train_and_evaluate(replace(prepared, cfg=cfg), Reporter())
                results[recipe, mode, seed] = (out.metrics["best_val_accuracy"], out.metrics["test_accuracy"],
                                               time.monotonic() - start)
                print(f"{recipe:<20}{mode:<8} seed {seed}: val {results[recipe, mode, seed][0]:.4f} "
                      f"test {results[recipe, mode, seed][1]:.4f} ({results[recipe, mode, seed][2]:.0f} s)", flush=True)
    print(f"\nrps validation benchmark: {'REAL mirrors' if real else 'tiny generated data'}, split=official; "
          "validation accuracy / official test accuracy per recipe and seed\n")
    header = "| recipe | " + " | ".join(f"{mode} s{seed}" for mode in MODES for seed in args.seeds) + " |"
    print(header + "\n|" + "---|" * (1 + len(MODES) * len(args.seeds)))
    for recipe in args.recipes:
        cells = [f"{results[recipe, m, s][0]:.3f} / {results[recipe, m, s][1]:.3f}" for m in MODES for s in args.seeds]
        print(f"| {recipe} | " + " | ".join(cells) + " |")
    print("\n| Spearman(val, test) across recipes | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |")
    print("|---|" + "---|" * (len(args.seeds) + 1))
    for mode in MODES:
        rhos = [spearman([results[r, mode, s][0] for r in args.recipes], [results[r, mode, s][1] for r in args.recipes])
                for s in args.seeds]
        finite = [r for r in rhos if not math.isnan(r)]
        mean = sum(finite) / len(finite) if finite else math.nan
        print(f"| {mode} validation | " + " | ".join(f"{r:.2f}" for r in rhos) + f" | {mean:.2f} |")


if __name__ == "__main__":
    from rps.quiet import quiet_tensorflow_startup

    quiet_tensorflow_startup()
    main()
