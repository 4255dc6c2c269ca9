"""Benchmark: the feature cache against the uncached pipeline, side by side in one process.

    python -m benchmarks.speed                       # tiny generated data and backbone (seconds; CI)
    TFDS_DATA_DIR=../shared/offline/tfds TFHUB_CACHE_DIR=../shared/offline/tfhub \\
        python -m benchmarks.speed --uncached-sweep-points 1     # the real mirrors (minutes)
    python -m benchmarks.speed --threads             # also compare TensorFlow thread-pool settings

Runs the same ``rps.training.pipeline.train_and_evaluate`` a real run uses (without MLflow logging):
(a) uncached, the backbone inside every training step like the reference recipe; (b) cached,
cold (features computed by XNNPACK into an empty cache, converting the backbone first) and (b')
the same with TensorFlow computing the features; (c) cached, warm (cache hit); (d) a k-point
dropout x lr sweep on the cache, starting cold; (e) the same sweep uncached; then ``python -m
rps.predict`` (a process of its own) on the test images with the model of (b). Prints the CPU,
wall times, ratios to (a), each run's and the whole process's peak memory, images/s (and the
backbone's forward pass alone: the CPU's ceiling), with the targets (they apply to the real
mirrors; on tiny data fixed overheads dominate).
Extra arguments are Hydra overrides (e.g. ``epochs=2 batch_size=64``).
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import rps  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from benchmarks.measure import cpu, forward_rate, peak_gb, reset_peak, timed
from benchmarks.processes import benchmarks_env
from rps.config import compose
from rps.synthetic import mirrors_in_env, tiny_mirrors

TARGETS = {"cold": 0.25, "warm": 0.05, "sweep": 1.5}  # times relative to (a), the uncached run
FEATURES_TARGET, SPEEDUP_TARGET = 200, 1.8  # XNNPACK feature extraction: images/s, and x TensorFlow's
PREDICT_TARGET = 150  # images/s of the predict CLI's path after the model is loaded
PEAK_TARGET_GB = 2.2
DROPOUTS = (0.2, 0.5, 0.8)
LRS = (1e-2, 1e-3, 1e-4)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


THREAD_SETTINGS = ((0, 0), (1, 1), (2, 1), (1, 2), (2, 2))  # (intra_op, inter_op); 0 = TF's choice


def _probe_threads(intra: int, inter: int, overrides: list[str], images: int = 256) -> None:
    """Child process: backbone images/s with these thread pools (settable only before TF starts)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    from rps.data import examples, pipelines
    from rps.model.backbone import extract_features, tf_forward
    from rps.training.pipeline import prepare

    cfg = compose(*overrides)
    prepared = prepare(cfg)
    forward = tf_forward(prepared.backbone)
    train, _, _, _ = examples.load_tfds(prepared.source)
    sample = train.take(np.arange(min(images, len(train))))
    batches = pipelines.make_dataset(sample, cfg.backbone.image_size, 64, 1).map(lambda x, y: x)
    extract_features(forward, batches.take(1), 64)  # warm-up: tracing
    start = time.monotonic()
    extract_features(forward, batches, len(sample))
    print(f"THREADS {intra} {inter} {len(sample) / (time.monotonic() - start):.2f}")


def compare_threads(overrides: list[str], settings=THREAD_SETTINGS) -> None:
    """Backbone throughput for each thread setting, each in a fresh process."""
    print("backbone images/s by TensorFlow thread pools (intra_op, inter_op; 0 = default):")
    for intra, inter in settings:
        out = subprocess.run([sys.executable, "-m", "benchmarks.speed", "--probe-threads", f"{intra},{inter}", *overrides],
                             capture_output=True, text=True, env=benchmarks_env())
        rate = next((line.split()[-1] for line in out.stdout.splitlines() if line.startswith("THREADS")), "failed")
        print(f"  intra_op={intra} inter_op={inter}: {rate}", flush=True)


def _predict_rate(outcome, image_size: int, folder: Path) -> tuple[float, str]:
    """``python -m rps.predict`` (its own process, as users run it) on the run's test images, as
    files: (images/s after the model is loaded, engine), as the CLI reports them."""
    import json
    import re

    from rps.model.export import ExportedClassifier
    from rps.model.export import model_info
    from rps.model.export import INFO_FILE

    saved = folder / "saved_model"
    ExportedClassifier(outcome.backbone, outcome.head, outcome.class_names, image_size).save(str(saved))
    (saved / INFO_FILE).write_text(json.dumps(model_info(outcome.class_names, image_size)))
    images = folder / "images"
    images.mkdir()
    for i, encoded in enumerate(outcome.test_examples.images):
        (images / f"{i:04d}.jpg").write_bytes(open(encoded, "rb").read() if outcome.test_examples.from_files else encoded)
    out = subprocess.run([sys.executable, "-m", "rps.predict", str(saved), str(images)], capture_output=True, text=True)
    found = re.search(r"\(([\d.]+) images/s, reading included; engine: (.*)\)", out.stderr)
    if out.returncode != 0 or not found:
        raise RuntimeError(f"rps.predict failed: {out.stderr[-1000:]}")
    return float(found.group(1)), found.group(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep-points", type=int, default=9, help="points of the cached sweep (default 9)")
    parser.add_argument("--uncached-sweep-points", type=int, default=None,
                        help="points of the uncached sweep (default: --sweep-points; 0 skips it)")
    parser.add_argument("--thread-setting", action="append", metavar="INTRA,INTER",
                        help="with --threads: only this setting (repeatable; default: 0,0 1,1 2,1 1,2 2,2)")
    parser.add_argument("--threads", action="store_true",
                        help="also compare TensorFlow thread-pool settings (one process each)")
    parser.add_argument("--probe-threads", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. epochs=2 batch_size=64")
    args = parser.parse_args(argv)
    if args.probe_threads:
        intra, inter = (int(n) for n in args.probe_threads.split(","))
        return _probe_threads(intra, inter, args.overrides)
    uncached_points = args.sweep_points if args.uncached_sweep_points is None else args.uncached_sweep_points

    with tempfile.TemporaryDirectory(prefix="rps-bench-") as tmp:
        tmp = Path(tmp)
        real = mirrors_in_env()
        overrides = ([] if real else tiny_mirrors(tmp)) + list(args.overrides)
        from dataclasses import replace

        from omegaconf import OmegaConf

        from rps.model.features import backbone_digest
        from rps.model.backbone import tf_forward
        from rps.training.pipeline import feature_forward, prepare, train_and_evaluate
        from rps.training.report import Reporter
        from rps.model.hub import backbone_dir

        base = compose(*overrides)
        peaks: dict[str, float] = {}  # resident memory (GB) by stage: start-up, then "a" ... "e"
        load_s, prepared = timed(lambda: prepare(base))  # checks, then loads the backbone once
        source = prepared.source
        peaks["start-up"] = peak_gb()  # imports and the backbone's load

        def run(stage: str, cache_dir: Path | None, engine: str = "xnnpack", **changes):
            cfg = OmegaConf.merge(base, changes, {"feature_cache": {
                "enabled": cache_dir is not None, "dir": str(cache_dir) if cache_dir else None, "engine": engine}})
            report = Reporter()
            reset_peak()
            seconds, outcome = timed(lambda: train_and_evaluate(replace(prepared, cfg=cfg), report))
            peaks[stage] = max(peaks.get(stage, 0.0), peak_gb())  # a sweep's stage: its highest run
            return seconds, report, outcome

        grid = list(itertools.product(DROPOUTS, LRS))
        sweep_grid = [grid[i % len(grid)] for i in range(args.sweep_points)]

        def sweep(stage: str, cache_dir: Path | None, points) -> float:
            return sum(run(stage, cache_dir, head={"dropout": d}, optimizer={"lr": lr})[0] for d, lr in points)

        data = f"{source.name} {source.version} ({source.n_train}+{source.n_test} images)"
        print(f"rps benchmark: {'REAL mirrors' if real else 'tiny generated data'}: {data}; "
              f"backbone {base.backbone.handle}; epochs={base.epochs} batch_size={base.batch_size}", flush=True)
        uncached_s, uncached, _ = run("a", None)
        n_images = source.n_train + source.n_test
        n_test = int(uncached.recorded["params"]["data.n_test"])
        backbone_passes = base.epochs * (n_images - n_test) + n_test  # images through the backbone, uncached
        cold_s, cold, outcome = run("b", tmp / "cache")  # XNNPACK, converting the backbone first
        tf_cold_s, tf_cold, _ = run("b'", tmp / "cache-tf", engine="tf")
        warm_s, _, _ = run("c", tmp / "cache")
        sweep_s = sweep("d", tmp / "sweep-cache", sweep_grid)
        uncached_sweep_s = sweep("e", None, sweep_grid[:uncached_points]) if uncached_points else float("nan")
        peak = max(peaks.values())  # of the pipeline runs; rps.predict is a process of its own
        size, handle = base.backbone.image_size, base.backbone.handle
        digest = backbone_digest(handle, backbone_dir(handle))  # as a run computes it: the conversion is cached
        lite_forward = feature_forward(base, prepared.backbone, digest, tmp / "cache")[0]
        ceiling = forward_rate(lite_forward, size), forward_rate(tf_forward(prepared.backbone), size)
        (tmp / "predict").mkdir()
        predict_rate, predict_engine = _predict_rate(outcome, base.backbone.image_size, tmp / "predict")

        def line(label: str, seconds: float, stage: str, target: float | None = None) -> str:
            ratio = seconds / uncached_s
            verdict = "" if target is None else f"  target <= {target:.2f}x: {_verdict(ratio <= target)}"
            return f"  {label:<38}{seconds:9.1f} s  {ratio:6.2f}x (a)  peak {peaks.get(stage, 0.0):.2f} GB{verdict}"

        lite_rate = n_images / max(cold.recorded["metrics"]["timing_feature_extraction_seconds"], 1e-9)
        tf_rate = n_images / max(tf_cold.recorded["metrics"]["timing_feature_extraction_seconds"], 1e-9)
        print(f"\nCPU: {cpu()}; backbone load {load_s:.1f} s (once, not counted below); features by "
              f"{cold.recorded['tags']['feature_engine']}")
        print(line("(a) uncached run", uncached_s, "a"))
        print(line("(b) cached run, cold (XNNPACK)", cold_s, "b", TARGETS["cold"]))
        print(line("(b') cached run, cold (TensorFlow)", tf_cold_s, "b'"))
        print(line("(c) cached run, warm (hit)", warm_s, "c", TARGETS["warm"]))
        print(line(f"(d) {args.sweep_points}-point sweep, cached", sweep_s, "d", TARGETS["sweep"]))
        if uncached_points:
            per_point = uncached_sweep_s / uncached_points
            print(line(f"(e) {uncached_points}-point sweep, uncached", uncached_sweep_s, "e")
                  + f"   ({per_point:.1f} s/point, {args.sweep_points} points ~{per_point * args.sweep_points:.0f} s)")
        print(f"  backbone images/s: {backbone_passes / uncached_s:.1f} inside fit+evaluate (a); feature extraction "
              f"{lite_rate:.1f} XNNPACK (b) vs {tf_rate:.1f} TensorFlow (b'): {lite_rate / tf_rate:.2f}x  "
              f"target >= {FEATURES_TARGET} images/s: {_verdict(lite_rate >= FEATURES_TARGET)}, "
              f">= {SPEEDUP_TARGET}x: {_verdict(lite_rate / tf_rate >= SPEEDUP_TARGET)}")
        print(f"  the backbone's forward pass alone (random images, no reading or resizing): {ceiling[0]:.1f} images/s "
              f"XNNPACK, {ceiling[1]:.1f} TensorFlow: this CPU's ceiling for feature extraction and prediction")
        print(f"  python -m rps.predict on the {n_test} test images: {predict_rate:.1f} images/s after loading the "
              f"model ({predict_engine})  target >= {PREDICT_TARGET}: {_verdict(predict_rate >= PREDICT_TARGET)}")
        print(f"  peak memory (whole benchmark process): {peak:.2f} GB  "
              f"target <= {PEAK_TARGET_GB} GB: {_verdict(peak <= PEAK_TARGET_GB)}")
        if not real:
            print("  (tiny data: fixed per-run overheads dominate; the targets are meant for the real mirrors)")
        sys.stdout.flush()
        if args.threads:
            settings = [tuple(int(n) for n in s.split(",")) for s in args.thread_setting] if args.thread_setting \
                else THREAD_SETTINGS
            compare_threads(overrides, settings)


if __name__ == "__main__":
    from rps.common.quiet import quiet_tensorflow_startup

    quiet_tensorflow_startup()
    main()
