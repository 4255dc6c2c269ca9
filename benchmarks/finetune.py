"""Benchmark: fine-tuning on images (today's path) against fine-tuning on activations cached below
the cut (rps.training.finetune_cache), interleaved seed by seed in one process.

    TFDS_DATA_DIR=../shared/offline/tfds TFHUB_CACHE_DIR=../shared/offline/tfhub \\
        python -m benchmarks.finetune                       # official_robust, seeds 1 2 3
    python -m benchmarks.finetune --seeds 1 --upper-options # also TensorFlow's options for the upper part
    python -m benchmarks.finetune                           # without the mirrors: tiny generated data (smoke)

The recipe is ``experiments/official_robust.yaml`` (official split, grouped validation, phase 1 on
cached features, phase 2 with augmented images), one ``rps.training.pipeline.train_and_evaluate`` per
seed and path, without MLflow. The feature cache is filled first (not counted). Then, for each
seed: (a) fine-tuning on images; (b) on cached activations, cold (the seed's augmented views
computed; for the first seed also the unaugmented pool and the lower part's TFLite conversion);
(c) the same again, warm. Every cache lives in a temporary folder (XDG_CACHE_HOME too), so
"cold" is cold. Reported: each run's wall time, its fine-tuning epochs (the last one is the
steady state: the first includes tracing), validation and test accuracy, the exported model's
test accuracy for (b)/(c) (the hub module holding the written-back weights), each run's peak
memory and the process's. ``--upper-options`` times the upper part's training step alone on its
real activations: float32 vs bfloat16 mixed precision vs XLA, batch sizes, and TensorFlow's
thread pools (one process per setting).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import rps  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from benchmarks.processes import benchmarks_env
from benchmarks.measure import cpu, forward_rate, peak_gb, reset_peak
from rps.training.outcome import OBJECTIVE
from rps.config import compose
from rps.synthetic import mirrors_in_env, tiny_mirrors
from rps.training.report import Reporter

PATHS = {"a": "images (today)", "b": "cached, cold", "c": "cached, warm"}
FLOAT32_ARM = {"d": "cached float32, cold"}  # --float32: activations stored as float32 instead
TARGETS = {"epoch": 4.0, "seed": 0.3, "peak_gb": 2.5}  # epoch speed-up >=, warm seed time <= x (a), peak <=
THREAD_SETTINGS = ((0, 0), (2, 1), (1, 1), (1, 2))  # (intra_op, inter_op); 0: TensorFlow's choice


class TimedReporter(Reporter):
    """A Reporter that also notes when each epoch ends."""

    def __init__(self):
        super().__init__()
        self.ended: list[float] = []

    def epoch(self, values, step):
        self.ended.append(time.monotonic())
        super().epoch(values, step)


def _run(prepared, cfg, peaks: dict, stage: str):
    from dataclasses import replace

    from rps.training.pipeline import train_and_evaluate

    report = TimedReporter()
    reset_peak()
    start = time.monotonic()
    outcome = train_and_evaluate(replace(prepared, cfg=cfg), report)
    seconds = time.monotonic() - start
    peaks[stage] = max(peaks.get(stage, 0.0), peak_gb())
    phases = [m.get("phase") for _, m in report.epochs]
    first2 = phases.index(2)
    epochs = list(np.diff([start, *report.ended]))[first2:]  # phase-2 epochs: train + validation
    return {"seconds": seconds, "epochs": epochs, "report": report, "outcome": outcome,
            "test": outcome.metrics["test_accuracy"], "val": outcome.metrics[OBJECTIVE]}


def _exported(outcome, image_size: int) -> tuple[float, float]:
    """Test accuracy of the image model the run exports (its backbone holds the trained weights),
    and its largest probability difference from the predictions the run reported."""
    from rps.data.pipelines import make_dataset
    from rps.training.loop import predict

    test = make_dataset(outcome.test_examples, image_size, 32, len(outcome.class_names))
    probs, labels = predict(outcome.classifier, test)
    return float(np.mean(probs.argmax(1) == labels)), float(np.abs(probs - outcome.probs).max())


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def compare_paths(prepared, base, seeds: list[int], peaks: dict, paths: dict = PATHS) -> dict:
    """Each path for each seed, interleaved; prints a line per run."""
    from omegaconf import OmegaConf

    from rps.training import finetune_cache

    results = {key: [] for key in paths}
    for seed in seeds:
        for key in paths:
            cfg = OmegaConf.merge(base, {"seed": seed, "backbone": {"fine_tune_cache": key != "a"}})
            finetune_cache.STORAGE = np.float32 if key == "d" else np.float16  # (d): its own cache entries
            r = _run(prepared, cfg, peaks, key)
            r["exported"], r["gap"] = _exported(r["outcome"], base.backbone.image_size) if key != "a" else (r["test"], 0.0)
            r["path"] = r["report"].recorded["tags"]["feature_cache_fine_tune"]
            r["cache"] = r["report"].recorded["tags"].get("activation_cache", "-")
            del r["outcome"], r["report"]
            results[key].append(r)
            print(f"  seed {seed} ({key}) {paths[key]:<22} {r['seconds']:7.1f} s  fine-tuning epochs "
                  f"{' / '.join(f'{e:.1f}' for e in r['epochs'])} s  val {r['val']:.4f}  test {r['test']:.4f}  "
                  f"exported {r['exported']:.4f} (probabilities within {r['gap']:.1e})  activation cache {r['cache']}"
                  f"  peak {peak_gb():.2f} GB  load {os.getloadavg()[0]:.1f}", flush=True)
    finetune_cache.STORAGE = np.float16
    print(f"  (b)/(c) path: {results['b'][0]['path']}")
    return results


def summarize(results: dict, peaks: dict) -> None:
    a, c = results["a"], results["c"]
    steady = {k: [r["epochs"][-1] for r in rs] for k, rs in results.items()}
    epoch_ratio = statistics.median(steady["a"]) / statistics.median(steady["b"] + steady["c"])
    labels = PATHS | FLOAT32_ARM
    seed_ratio = statistics.mean(r["seconds"] for r in c) / statistics.mean(r["seconds"] for r in a)
    diffs = [y["test"] - x["test"] for x, y in zip(a, c)]
    peak = max(peaks.values())
    print("\n| path | seconds per seed (mean) | last fine-tuning epoch, s (median) | val accuracy | test accuracy |")
    print("|---|---|---|---|---|")
    for key, rs in results.items():
        print(f"| ({key}) {labels[key]} | {statistics.mean(r['seconds'] for r in rs):.1f} | "
              f"{statistics.median(steady[key]):.1f} | {_mean_sd([r['val'] for r in rs])} | "
              f"{_mean_sd([r['test'] for r in rs])} |")
    print(f"\nfine-tuning epoch, (a) / cached: {epoch_ratio:.2f}x faster (target >= {TARGETS['epoch']}x: "
          f"{'PASS' if epoch_ratio >= TARGETS['epoch'] else 'FAIL'})")
    print(f"seed time, warm (c) / (a): {seed_ratio:.2f}x (target <= {TARGETS['seed']}x: "
          f"{'PASS' if seed_ratio <= TARGETS['seed'] else 'FAIL'})")
    print(f"test accuracy, (c) - (a) per seed: {' '.join(f'{d:+.4f}' for d in diffs)}; mean {statistics.mean(diffs):+.4f}; "
          f"seed-to-seed spread (sample sd) of (a) {statistics.stdev([r['test'] for r in a]) if len(a) > 1 else 0:.4f}")
    cached = [r for key, rs in results.items() if key != "a" for r in rs]
    print(f"exported model vs reported test accuracy (cached paths): largest gap "
          f"{max(abs(r['exported'] - r['test']) for r in cached):.4f}, probabilities within "
          f"{max(r['gap'] for r in cached):.1e}")
    print(f"peak memory by path: {', '.join(f'({k}) {v:.2f} GB' for k, v in peaks.items())}; whole process "
          f"{peak:.2f} GB (target <= {TARGETS['peak_gb']} GB: {'PASS' if peak <= TARGETS['peak_gb'] else 'FAIL'})")


def _upper_model(prepared, cfg, policy: str):
    """The real backbone's split at the recipe's cut, its upper part and a head, built under ``policy``."""
    import tensorflow as tf

    from rps.model import split as bs
    from rps.model.head import build_head

    tf.keras.mixed_precision.set_global_policy(policy)
    try:  # the split's own equality check would refuse bfloat16: assemble the parts here
        module = prepared.backbone.resolved_object
        net, pairs = bs._mobilenet(module, cfg.backbone.image_size)
        cut, _ = bs._cut_index(net, pairs, module, cfg.backbone.fine_tune_from)
        upper = bs._upper(net, bs._cache_index(net, cut), cut)
        head = build_head(upper.output.shape[-1], 3, cfg.head)
        inputs = tf.keras.Input(upper.input.shape[1:])
        probs = tf.keras.layers.Activation("linear", dtype="float32")(head(upper(inputs)))
        return tf.keras.Model(inputs, probs)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


VARIANTS = {"float32, batch 64": ("float32", 64, False), "bfloat16 mixed, batch 64": ("mixed_bfloat16", 64, False),
            "float32 + XLA (jit_compile), batch 64": ("float32", 64, True),
            "float32, batch 32": ("float32", 32, False), "float32, batch 128": ("float32", 128, False)}


def upper_step_rates(prepared, cfg, names=tuple(VARIANTS), rounds: int = 3, n_batches: int = 12) -> dict[str, float]:
    """Images/s of the upper part's training step (``fit`` on in-memory activations of random
    images), the variants timed in turn for ``rounds`` rounds (the median is reported)."""
    import tensorflow as tf
    from omegaconf import OmegaConf

    from rps.model import split as bs
    from rps.model.head import make_optimizer

    split = bs.split_backbone(prepared.backbone, cfg.backbone.image_size, cfg.backbone.fine_tune_from)
    size = cfg.backbone.image_size
    sample = split.lower.predict(np.random.default_rng(0).random((64, size, size, 3), np.float32), batch_size=16,
                                 verbose=0)
    fine = OmegaConf.merge(cfg.optimizer, {"lr": cfg.optimizer.fine_tune_lr})
    built = {}
    for name in names:
        policy, batch, xla = VARIANTS[name]
        m = _upper_model(prepared, cfg, policy)
        m.compile(optimizer=make_optimizer(fine, 1), loss="categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=xla)
        n = batch * n_batches
        x = np.resize(sample, (n, *sample.shape[1:]))
        y = np.eye(3, dtype=np.float32)[np.arange(n) % 3]
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).cache()
        start = time.monotonic()
        m.fit(ds.take(2), verbose=0)  # tracing (and XLA's compilation)
        built[name] = (m, ds, n, time.monotonic() - start)
    rates = {name: [] for name in built}
    for _ in range(rounds):
        for name, (m, ds, n, _) in built.items():
            start = time.monotonic()
            m.fit(ds, verbose=0)
            rates[name].append(n / (time.monotonic() - start))
    for name, values in rates.items():
        print(f"  {name:<40} {statistics.median(values):7.1f} images/s (median of {rounds}: "
              f"{', '.join(f'{v:.0f}' for v in values)}; first call {built[name][3]:.1f} s)", flush=True)
    return {name: statistics.median(v) for name, v in rates.items()}


def lower_rates(prepared, cfg, cache_dir: Path) -> None:
    """Images/s of the lower part alone (random images, no reading or augmenting): XNNPACK (its
    TFLite conversion, as the activation cache runs it) against TensorFlow."""
    from rps.model import split as bs
    from rps.model.backbone import tf_forward
    from rps.model.features import backbone_digest
    from rps.model.hub import backbone_dir
    from rps.training.pipeline import feature_forward

    split = bs.split_backbone(prepared.backbone, cfg.backbone.image_size, cfg.backbone.fine_tune_from)
    digest = backbone_digest(cfg.backbone.handle, backbone_dir(cfg.backbone.handle))
    lite, _, engine = feature_forward(cfg, split.lower, digest, cache_dir, f"backbone-below-{split.cache_layer}")
    size = cfg.backbone.image_size
    print(f"  lower part (below {split.cache_layer}) forward: {forward_rate(lite, size):.1f} images/s on {engine}, "
          f"{forward_rate(tf_forward(split.lower), size):.1f} on TensorFlow (best of 3 x 64 images)", flush=True)


def _probe_threads(intra: int, inter: int, overrides: list[str]) -> None:
    """Child process: the float32 upper step's images/s under these thread pools."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    from rps.training.pipeline import prepare

    cfg = compose(*overrides)
    rate = upper_step_rates(prepare(cfg), cfg, names=("float32, batch 64",))["float32, batch 64"]
    print(f"THREADS {intra} {inter} {rate:.1f}")


def compare_threads(overrides: list[str], rounds: int = 2) -> None:
    print("upper training step, float32 batch 64, by TensorFlow thread pools (intra_op, inter_op; 0 = default):")
    rates = {setting: [] for setting in THREAD_SETTINGS}
    for _ in range(rounds):  # settings in turn, each in a fresh process (pools are fixed at start)
        for intra, inter in THREAD_SETTINGS:
            out = subprocess.run([sys.executable, "-m", "benchmarks.finetune", "--probe-threads", f"{intra},{inter}",
                                  *overrides], capture_output=True, text=True, env=benchmarks_env())
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("THREADS")), None)
            if line:
                rates[(intra, inter)].append(float(line.split()[-1]))
    for (intra, inter), values in rates.items():
        shown = f"{statistics.median(values):.1f} images/s ({', '.join(f'{v:.0f}' for v in values)})" if values else "failed"
        print(f"  intra_op={intra} inter_op={inter}: {shown}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3], help="none: skip the comparison")
    parser.add_argument("--upper-options", action="store_true",
                        help="also time the upper part's training step under TensorFlow's options")
    parser.add_argument("--float32", action="store_true",
                        help="also (d): the cached path with float32 activations (is float16 storage harmless?)")
    parser.add_argument("--probe-threads", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides on top of +experiment=official_robust")
    args = parser.parse_args(argv)
    overrides = ["+experiment=official_robust", *args.overrides]
    if args.probe_threads:
        intra, inter = (int(n) for n in args.probe_threads.split(","))
        return _probe_threads(intra, inter, overrides)

    with tempfile.TemporaryDirectory(prefix="rps-bench-finetune-") as tmp:
        tmp = Path(tmp)
        os.environ["XDG_CACHE_HOME"] = str(tmp / "xdg")  # cold TFLite conversions too
        real = mirrors_in_env()
        overrides = [*overrides, *([] if real else tiny_mirrors(tmp, "mobilenet", n_train=120, n_test=30)), f"feature_cache.dir={tmp / 'cache'}"]
        from omegaconf import OmegaConf

        from rps.training.pipeline import prepare

        base = compose(*overrides)
        peaks: dict[str, float] = {}
        prepared = prepare(base)
        print(f"rps fine-tuning benchmark, {time.strftime('%Y-%m-%d')}: {'REAL mirrors' if real else 'tiny generated data'}"
              f"; CPU: {cpu()}; +experiment=official_robust {' '.join(args.overrides)}; seeds {args.seeds}", flush=True)
        if args.seeds:
            start = time.monotonic()
            _run(prepared, OmegaConf.merge(base, {"backbone": {"fine_tune_epochs": 1}, "epochs": 1}), peaks, "warm-up")
            print(f"  feature cache filled first ({time.monotonic() - start:.0f} s, not counted)", flush=True)
            paths = PATHS | (FLOAT32_ARM if args.float32 else {})
            summarize(compare_paths(prepared, base, args.seeds, peaks, paths), peaks)
        if args.upper_options:
            print("\nupper part's training step (fit on activations of random images, in-memory):")
            lower_rates(prepared, base, tmp / "cache")
            upper_step_rates(prepared, base)
            compare_threads(overrides[1:])  # the child adds +experiment=official_robust itself


if __name__ == "__main__":
    from rps.common.quiet import quiet_tensorflow_startup

    quiet_tensorflow_startup()
    main()
