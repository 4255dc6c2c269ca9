"""Each exported form of the trained model, measured: the SavedModel and the TFLite formats of
``export.formats`` (rps.model.formats), each logged with its size, the validation and test
accuracy of that exact file, and its latency per image on the machine that ran the run.

Latency is per single image (batch 1), the median (and 90th percentile) of
``export.latency_runs`` timed calls after 5 untimed ones, through the engine a user of that file
gets: TFLite files on LiteRT's XNNPACK delegate with every core this process may use, the
SavedModel in TensorFlow. It is a number of this machine only (the table says which).
"""

from __future__ import annotations

import hashlib

import csv
import io
import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from omegaconf import DictConfig

from rps.common import machine
from rps.data.pipelines import make_dataset
from rps.model import formats, lite
from rps.training.outcome import Outcome
from rps.training.report import Reporter

log = logging.getLogger(__name__)
WARMUP_CALLS = 5
SAVED_MODEL = "saved_model"


@dataclass
class Measured:
    """One exported form of the model and its numbers (a row of ``export/formats.md``)."""

    format: str
    file: str
    size_bytes: int
    val_accuracy: float
    test_accuracy: float
    latency_ms: float  # median, batch 1
    latency_p90_ms: float
    engine: str


def latency(forward: Callable, image: np.ndarray, runs: int) -> tuple[float, float]:
    """Median and 90th percentile, in milliseconds, of ``runs`` calls of ``forward`` on one image."""
    for _ in range(WARMUP_CALLS):
        forward(image)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        forward(image)
        times.append(1000 * (time.perf_counter() - start))
    p90 = statistics.quantiles(times, n=10)[-1] if len(times) >= 2 else times[0]
    return statistics.median(times), p90


def _probabilities(forwards: dict[str, Callable], examples, size: int) -> dict[str, np.ndarray]:
    """Each model's predictions for ``examples``, the images decoded once and fed to every model."""
    out: dict[str, list] = {name: [] for name in forwards}
    for images, _ in make_dataset(examples, size, lite.BATCH, 1).as_numpy_iterator():
        for name, forward in forwards.items():
            out[name].append(np.asarray(forward(images)))
    return {name: np.concatenate(parts) if parts else np.zeros((0, 0)) for name, parts in out.items()}


def representative(examples, size: int, count: int, seed: int) -> Callable:
    """A callable yielding ``count`` training images (a seeded sample), one ``[1, size, size, 3]`` at a time."""
    rng = np.random.default_rng(seed)
    sample = examples.take(np.sort(rng.choice(len(examples), min(count, len(examples)), replace=False)))

    def images():
        for batch, _ in make_dataset(sample, size, 1, 1).as_numpy_iterator():
            yield batch

    return images


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _saved_model_forward(saved: Path) -> Callable:
    import tensorflow as tf

    module = tf.saved_model.load(str(saved))
    return lambda images: module(tf.constant(images)).numpy()


def convert_formats(cfg: DictConfig, saved: Path, info: dict, out: Outcome) -> tuple[dict[str, bytes], dict[str, str]]:
    """Each format of ``export.formats`` as a TFLite file carrying ``info``, and why any failed."""
    contents, errors = {}, {}
    calibration = representative(out.train_examples, cfg.backbone.image_size, cfg.export.representative_images, cfg.seed)
    for fmt in cfg.export.formats:
        try:
            contents[fmt] = formats.with_info(formats.convert(saved, fmt, calibration), info)
        except Exception as err:  # the converter raises many types for ops a format cannot hold
            errors[fmt] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            log.warning("Export to TFLite %s failed (the run goes on without it): %s", fmt, errors[fmt])
    return contents, errors


def measure(cfg: DictConfig, saved: Path, contents: dict[str, bytes], out: Outcome) -> list[Measured]:
    """The SavedModel's and each TFLite file's size, validation and test accuracy, and latency."""
    size = cfg.backbone.image_size
    forwards = {SAVED_MODEL: _saved_model_forward(saved)} | {fmt: lite.LiteModel(c) for fmt, c in contents.items()}
    scores = {}
    for split, examples in (("val", out.val_examples), ("test", out.test_examples)):
        probs = _probabilities(forwards, examples, size)
        scores[split] = {name: float(np.mean(p.argmax(1) == examples.labels)) if len(p) else float("nan")
                         for name, p in probs.items()}
    image = next(make_dataset(out.val_examples.take(np.arange(1)), size, 1, 1).as_numpy_iterator())[0]
    rows = []
    for name, forward in forwards.items():
        median, p90 = latency(forward, image, cfg.export.latency_runs)
        saved_model = name == SAVED_MODEL
        rows.append(Measured(
            name, "model (MLflow model)" if saved_model else formats.file_name(name),
            folder_bytes(saved) if saved_model else len(contents[name]), scores["val"][name], scores["test"][name],
            median, p90, _tf_engine() if saved_model else lite.engine_name()))
    return rows


def _tf_engine() -> str:
    import tensorflow as tf

    return f"tensorflow {tf.__version__} ({machine.cores()} cores)"


def report_exports(cfg: DictConfig, saved: Path, info: dict, out: Outcome, report: Reporter) -> list[Measured]:
    """Convert, measure and report every form: metrics ``export/<format>/...``, the table
    ``export/formats.md`` and ``.csv``, and the TFLite files under ``export/`` (with export.model)."""
    contents, errors = convert_formats(cfg, saved, info, out)
    if errors:
        report.tags({f"export.{fmt}.error": error for fmt, error in errors.items()})
    rows = measure(cfg, saved, contents, out)
    reference = rows[0].test_accuracy
    for row in rows:
        report.metrics({f"export/{row.format}/{key}": getattr(row, key)
                        for key in ("size_bytes", "val_accuracy", "test_accuracy", "latency_ms", "latency_p90_ms")})
        if row.format in formats.TOLERANCE:
            gap = abs(row.test_accuracy - reference)
            report.metrics({f"export/{row.format}/test_accuracy_gap": gap})
            report.tags({f"export.{row.format}.within_tolerance": str(gap <= formats.TOLERANCE[row.format]).lower()})
            if gap > formats.TOLERANCE[row.format]:
                log.warning("TFLite %s: test accuracy %.4f is %.1f points from the SavedModel's %.4f (tolerance %.1f)",
                            row.format, row.test_accuracy, 100 * gap, reference, 100 * formats.TOLERANCE[row.format])
    report.text(table_markdown(rows, cfg.export.latency_runs, errors), "export/formats.md")
    report.text(table_csv(rows), "export/formats.csv")
    if cfg.export.model:
        for fmt, content in contents.items():
            path = saved.parent / formats.file_name(fmt)
            path.write_bytes(content)
            report.files(path, "export")  # and its SHA-256, which a download of it is checked against
            report.tags({f"rps.export.{fmt}.sha256": hashlib.sha256(content).hexdigest()})
    return rows


def table_markdown(rows: list[Measured], runs: int, errors: Optional[dict[str, str]] = None) -> str:
    """The formats side by side, with the machine and how latency was measured."""
    lines = ["| format | file | size (MB) | val accuracy | test accuracy | latency ms (median) | p90 ms | engine |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.format} | {r.file} | {r.size_bytes / 1e6:.2f} | {r.val_accuracy:.4f} | {r.test_accuracy:.4f} | "
              f"{r.latency_ms:.2f} | {r.latency_p90_ms:.2f} | {r.engine} |" for r in rows]
    lines += [f"| {fmt} | failed: {error.replace('|', '/')} | | | | | | |" for fmt, error in (errors or {}).items()]
    return "\n".join(lines) + (
        f"\n\nMeasured {time.strftime('%Y-%m-%d')} on {machine.describe()}: latency per image at batch 1, "
        f"median and 90th percentile of {runs} calls after {WARMUP_CALLS} untimed ones (a number of this "
        "machine only). Accuracy: each file itself on the run's validation and test splits; the run was "
        "chosen on validation only.\n")


def table_csv(rows: list[Measured]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(asdict(rows[0])))
    writer.writeheader()
    writer.writerows(asdict(r) for r in rows)
    return buffer.getvalue()
