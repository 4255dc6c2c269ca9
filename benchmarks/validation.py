"""Does validation predict the official test? Random vs grouped validation, over many recipes.

    TFDS_DATA_DIR=../shared/offline/tfds TFHUB_CACHE_DIR=../shared/offline/tfhub python -m benchmarks.validation
    python -m benchmarks.validation --seeds 1 2 --recipes head-2 head-30 finetune   # a subset
    python -m benchmarks.validation --folds 3 --modes grouped-3fold                  # 3-fold CV only

For every recipe (frozen heads with different regularization and epochs, fine-tuning variants),
every seed and every validation mode — ``random`` (a random 10% of the training images),
``grouped`` (whole clusters of similar frames, ``split.group_by=clusters``; seeds rotate through
disjoint carve-outs) and ``grouped-5fold`` (5-fold cluster CV, judged by the fold mean; ``--folds K``
makes it ``grouped-Kfold``; frozen heads only here: fine-tuning folds cost K fine-tunings per run,
too slow for a benchmark of many recipes, so fine-tuning recipes are left out of that mode) — it
trains on the official split and records the validation accuracy a run is chosen by and the
official test accuracy. Then, per seed and mode, the Spearman rank correlation between them
across recipes (the higher, the better validation tells recipes apart the way unseen hands do),
the test accuracy of the recipe a sweep would choose on that validation, and (``refit``) that
recipe trained again with validation's images (``split.refit=true``), its test accuracy reported
once. Runs in one process through ``rps.training.pipeline`` (no MLflow), on the feature cache
where it applies.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator

import rps  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from rps.synthetic import mirrors_in_env, tiny_mirrors

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


def validation_modes(folds: int = 5) -> dict[str, list[str]]:
    """Mode name -> overrides; the k-fold mode is named after its ``folds`` (the name is printed)."""
    return {"random": ["split.group_by=none"], "grouped": ["split.group_by=clusters", "split.groups=5"],
            f"grouped-{folds}fold": ["split.group_by=clusters", "split.groups=5", f"split.folds={folds}"]}


def applies(recipe: str, mode: str) -> bool:
    """Whether the benchmark runs ``recipe`` in ``mode`` (no fine-tuning folds: minutes per fold)."""
    return not (mode.endswith("fold") and "backbone.trainable=true" in RECIPES[recipe])


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (nan when either side is constant: validation that cannot rank)."""
    from scipy.stats import spearmanr

    if len(set(a)) < 2 or len(set(b)) < 2:
        return math.nan
    return float(spearmanr(a, b).statistic)


def main(argv: list[str] | None = None) -> None:
    # --folds first: it names the k-fold mode, one of --modes' choices
    folds = argparse.ArgumentParser(add_help=False)
    folds.add_argument("--folds", type=int, default=5, help="folds of the k-fold mode (default 5), >= 2")
    modes = validation_modes(folds.parse_known_args(argv)[0].folds)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[folds])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--modes", nargs="+", default=list(modes), choices=list(modes))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error(f"--folds {args.folds}: k-fold needs 2 or more (grouped is the one carve-out)")
    with official_data("rps-bench-validation-") as (base, real):
        _measure([*base, *args.overrides], args.recipes, args.seeds, {m: modes[m] for m in args.modes}, real)


@contextmanager
def official_data(prefix: str) -> Iterator[tuple[list[str], bool]]:
    """The overrides every run of a benchmark on the official split starts from, and whether the
    data are the real mirrors (both mirror variables set); else tiny generated data and a feature
    cache in a temporary folder named ``prefix...`` (removed after), with a split that fits them."""
    real = mirrors_in_env()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        extra = [] if real else ["split.val_size=30", "batch_size=32", f"feature_cache.dir={tmp}/features"]
        if not real:
            tiny_mirrors(tmp)
        yield ["split=official", *extra], real


def _measure(base: list[str], recipes: list[str], seeds: list[int], modes: dict[str, list[str]], real: bool) -> None:
    """Every recipe x mode (name -> overrides) x seed, then each mode's choice refitted, then :func:`report`."""
    from rps.config import compose
    from rps.training.pipeline import prepare, train_and_evaluate
    from rps.training.report import Reporter

    prepared = prepare(compose(*base))
    results: dict[tuple[str, str, int], dict] = {}
    for recipe in recipes:
        for mode in modes:
            if not applies(recipe, mode):
                continue
            for seed in seeds:
                cfg = compose(*base + RECIPES[recipe] + modes[mode] + [f"seed={seed}"])
                start = time.monotonic()
                out = train_and_evaluate(replace(prepared, cfg=cfg), Reporter())
                row = results[recipe, mode, seed] = {
                    "recipe": recipe, "status": "FINISHED", **out.metrics, "seconds": time.monotonic() - start}
                print(f"{recipe:<20}{mode:<8} seed {seed}: val {row['selection_val_accuracy']:.4f} "
                      f"(loss {row['selection_val_loss']:.4f}) test {row['test_accuracy']:.4f} ({row['seconds']:.0f} s)",
                      flush=True)
    from rps.search.summary import choose_best

    refits: dict[tuple[str, int], dict] = {}
    for mode in modes:  # the recipe each mode chooses, trained again with validation's images
        for seed in seeds:
            chosen = choose_best([results[r, mode, seed] for r in recipes if (r, mode, seed) in results])
            if chosen is None:  # no recipe of these runs in this mode (fine-tuning recipes have no folds here)
                continue
            key = (chosen["recipe"], seed)
            if key not in refits:
                cfg = compose(*base + RECIPES[chosen["recipe"]] + ["split.refit=true", f"seed={seed}"])
                out = train_and_evaluate(replace(prepared, cfg=cfg), Reporter())
                refits[key] = {"recipe": chosen["recipe"], "test_accuracy": out.metrics["test_accuracy"]}
                print(f"{chosen['recipe']:<20}refit   seed {seed}: test {out.metrics['test_accuracy']:.4f}", flush=True)
    print(report(results, refits, recipes, seeds, list(modes), real))


def report(results: dict[tuple[str, str, int], dict], refits: dict[tuple[str, int], dict], recipes: list[str],
           seeds: list[int], modes: list[str], real: bool) -> str:
    """Markdown: val / test per recipe and seed; per seed and mode the Spearman correlation of
    validation and test accuracy across recipes (over the recipes the mode applies to), what
    choosing on validation (as sweeps do: accuracy, then loss) would have given on test against the
    best test accuracy of any recipe, and the chosen recipe's refit on test."""
    from rps.search.summary import choose_best

    lines = [f"\nrps validation benchmark: {'REAL mirrors' if real else 'tiny generated data'}, split=official; "
             "validation accuracy / official test accuracy per recipe and seed\n",
             "| recipe | " + " | ".join(f"{mode} s{seed}" for mode in modes for seed in seeds) + " |",
             "|" + "---|" * (1 + len(modes) * len(seeds))]
    for recipe in recipes:
        cells = [f"{results[recipe, m, s]['selection_val_accuracy']:.3f} / {results[recipe, m, s]['test_accuracy']:.3f}"
                 if (recipe, m, s) in results else "n/a" for m in modes for s in seeds]
        lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
    lines += ["", "| validation | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |", "|---|" + "---|" * (len(seeds) + 1)]
    for mode in modes:
        rows = {s: [results[r, mode, s] for r in recipes if (r, mode, s) in results] for s in seeds}
        if not all(rows.values()):
            lines.append(f"| {mode}: no recipe of these runs in this mode | " + " | ".join("n/a" for _ in seeds) + " | n/a |")
            continue
        rhos = [spearman([x["selection_val_accuracy"] for x in rows[s]], [x["test_accuracy"] for x in rows[s]]) for s in seeds]
        finite = [r for r in rhos if not math.isnan(r)]
        lines.append(f"| {mode}: Spearman(val acc, test acc) | " + " | ".join(f"{r:.2f}" for r in rhos)
                     + f" | {sum(finite) / len(finite) if finite else math.nan:.2f} |")
        chosen = {s: choose_best(rows[s]) for s in seeds}
        lines.append(f"| {mode}: chosen recipe's test (best of any) | "
                     + " | ".join(f"{chosen[s]['recipe']} {chosen[s]['test_accuracy']:.3f} "
                                  f"({max(x['test_accuracy'] for x in rows[s]):.3f})" for s in seeds)
                     + f" | {sum(c['test_accuracy'] for c in chosen.values()) / len(seeds):.3f} |")
        refit = [refits[chosen[s]["recipe"], s]["test_accuracy"] for s in seeds]
        lines.append(f"| {mode}: chosen recipe refitted with validation's images, test | "
                     + " | ".join(f"{t:.3f}" for t in refit) + f" | {sum(refit) / len(seeds):.3f} |")
    return "\n".join(lines)

if __name__ == "__main__":
    from rps.common.quiet import quiet_tensorflow_startup

    quiet_tensorflow_startup()
    main()
