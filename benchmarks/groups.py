"""Better groups? What grouped validation clusters, and how many groups, against unseen hands.

    TFDS_DATA_DIR=../shared/offline/tfds TFHUB_CACHE_DIR=../shared/offline/tfhub python -m benchmarks.groups
    python -m benchmarks.groups --features backbone colour --groups 5 --seeds 0 1 2   # a subset

For every grouping (``split.group_features``: ``backbone``, ``colour``, ``mix``) x groups per class
(``split.groups``) x seed it trains one frozen recipe (``--recipe``, one of benchmarks.validation's
heads) on the official split with the grouped carve-out (``split.group_by=clusters``), in one
process through ``rps.training.pipeline`` (no MLflow), on the feature cache, and reads the run's
own ``data/groups.csv``. It reports, per run, validation accuracy, official test accuracy and
|val - test| (the level error: the closer the groups are to the people behind the images, the
better validation should estimate accuracy on unseen hands); per grouping, their mean and std,
the carve-out's size (fraction of the training images), whether every carve-out holds whole
groups of every class, whether the groups are the same for every seed and the carve-outs of each
cycle of K consecutive seeds disjoint; and how far each grouping agrees with backbone clusters of
the same size (adjusted Rand index, per class). Nothing is chosen: the test split is reported,
and the table is a study. The run exits 1 when a carve-out breaks a group or misses a class.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from dataclasses import replace

import numpy as np

import rps  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from benchmarks.validation import RECIPES, official_data
from rps.training.report import Reporter

FEATURES = ("backbone", "colour", "mix")
HEADS = [name for name, overrides in RECIPES.items() if "backbone.trainable=true" not in overrides]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", nargs="+", default=list(FEATURES), choices=FEATURES)
    parser.add_argument("--groups", type=int, nargs="+", default=[3, 5, 8], help="groups per class")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--recipe", default="head-10", choices=HEADS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args(argv)
    with official_data("rps-bench-groups-") as (base, real):
        runs, class_names = _measure([*base, "split.group_by=clusters", *RECIPES[args.recipe], *args.overrides],
                                     args.features, args.groups, args.seeds)
    print(report(runs, class_names, args.features, args.groups, args.seeds, real, args.recipe))
    if not all(run["whole"] for run in runs.values()):
        sys.exit("A carve-out broke a group or missed a class (see 'whole groups of every class').")


def _measure(base: list[str], features: list[str], groups: list[int], seeds: list[int]
             ) -> tuple[dict[tuple[str, int, int], dict], list[str]]:
    from rps.config import compose
    from rps.training.pipeline import prepare, train_and_evaluate

    prepared = prepare(compose(*base))
    runs, class_names = {}, []
    for kind in features:
        for k in groups:
            for seed in seeds:
                reporter = Reporter()
                cfg = compose(*base + [f"split.group_features={kind}", f"split.groups={k}", f"seed={seed}"])
                out = train_and_evaluate(replace(prepared, cfg=cfg), reporter)
                class_names = out.class_names
                run = runs[kind, k, seed] = carve_out(reporter) | {
                    "val": out.metrics["selection_val_accuracy"], "test": out.metrics["test_accuracy"]}
                print(f"{kind:<9}{k} groups seed {seed}: val {run['val']:.4f} test {run['test']:.4f} "
                      f"carve-out {run['fraction']:.3f} ({run['cycle']}) whole {run['whole']}", flush=True)
    return runs, class_names


def carve_out(reporter: Reporter) -> dict:
    """A grouped run's groups and carve-out, as it logged them: each training image's group, label
    and side (``data/groups.csv``), the carve-out's fraction, its cycle (``data.carve_out``), and
    whether it holds whole groups of every class."""
    rows = [line.split(",") for line in reporter.texts["data/groups.csv"].splitlines()[1:]]
    groups = np.array([group for _, group, _, _ in rows], dtype=object)
    held_out = np.array([side == "val" for _, _, side, _ in rows])
    labels = np.array([int(label) for *_, label in rows])
    broken = set(groups[held_out]) & set(groups[~held_out])
    return {"groups": groups, "labels": labels, "held_out": held_out, "fraction": float(held_out.mean()),
            "cycle": int(re.search(r" of (\d+):", reporter.recorded["params"]["data.carve_out"]).group(1)),
            "whole": not broken and set(labels[held_out]) == set(labels)}


def stability(runs: list[dict], seeds: list[int]) -> tuple[bool, bool]:
    """Whether every seed's run had the same groups, and whether the carve-outs of seeds in one
    cycle (K consecutive seeds ``K*c .. K*c+K-1``) are disjoint."""
    same = all(np.array_equal(run["groups"], runs[0]["groups"]) for run in runs)
    k = runs[0]["cycle"]
    held = {seed: set(np.flatnonzero(run["held_out"])) for seed, run in zip(seeds, runs)}
    disjoint = all(not held[a] & held[b] for a in seeds for b in seeds if a < b and a // k == b // k)
    return same, disjoint


def agreement(run: dict, backbone: dict, class_names: list[str]) -> str:
    """Adjusted Rand index of two groupings of the same images, per class."""
    from sklearn.metrics import adjusted_rand_score

    def ari(c: int) -> float:
        return adjusted_rand_score(backbone["groups"][run["labels"] == c], run["groups"][run["labels"] == c])

    return ", ".join(f"{name} {ari(c):.2f}" for c, name in enumerate(class_names))


def _mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ({statistics.stdev(values) if len(values) > 1 else 0.0:.3f})"


def report(runs: dict[tuple[str, int, int], dict], class_names: list[str], features: list[str], groups: list[int],
           seeds: list[int], real: bool, recipe: str) -> str:
    """Markdown: val / test / |val - test| per run; per grouping their mean (std), the carve-out's
    size, whole groups, stability and agreement with backbone clusters."""
    lines = [f"\nrps groups benchmark: {'REAL mirrors' if real else 'tiny generated data'}, split=official, "
             f"recipe {recipe}; validation accuracy / official test accuracy / |val - test| per seed\n",
             "| grouping | groups per class | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|" + "---|" * len(seeds)]
    for kind in features:
        for k in groups:
            cells = [runs[kind, k, s] for s in seeds]
            lines.append(f"| {kind} | {k} | " + " | ".join(
                f"{r['val']:.3f} / {r['test']:.3f} / {abs(r['val'] - r['test']):.3f}" for r in cells) + " |")
    lines += ["", "| grouping | groups per class | val mean (std) | test mean (std) | abs(val - test) mean (max) | "
              "abs(mean val - mean test) | carve-out, fraction of training images | whole groups of every class | "
              "same groups every seed | carve-outs of a cycle disjoint (K) | ARI with backbone clusters, per class |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind in features:
        for k in groups:
            cells = [runs[kind, k, s] for s in seeds]
            vals, tests = [r["val"] for r in cells], [r["test"] for r in cells]
            gaps = [abs(v - t) for v, t in zip(vals, tests)]
            same, disjoint = stability(cells, seeds)
            ari = agreement(cells[0], runs[("backbone", k, seeds[0])], class_names) \
                if kind != "backbone" and ("backbone", k, seeds[0]) in runs else "n/a"
            lines.append(f"| {kind} | {k} | {_mean_std(vals)} | {_mean_std(tests)} | {statistics.mean(gaps):.3f} "
                         f"({max(gaps):.3f}) | {abs(statistics.mean(vals) - statistics.mean(tests)):.3f} | "
                         f"{min(r['fraction'] for r in cells):.3f}-{max(r['fraction'] for r in cells):.3f} | "
                         f"{'yes' if all(r['whole'] for r in cells) else 'NO'} | {'yes' if same else 'NO'} | "
                         f"{'yes' if disjoint else 'NO'} ({cells[0]['cycle']}) | {ari} |")
    lines.append("\nNothing is chosen here: test accuracy is reported only; this is a study of how well each "
                 "grouping's validation estimates accuracy on unseen hands.")
    return "\n".join(lines)


if __name__ == "__main__":
    from rps.common.quiet import quiet_tensorflow_startup

    quiet_tensorflow_startup()
    main()
