"""Peak memory of ``python -m rps.predict`` on folders of 100 to 30,000 tiny images.

    python -m benchmarks.predict_memory <model> [--counts 100 3000 30000] [--side 32] [rps.predict options]

MODEL is anything rps.predict takes (a run, a registered model, a model folder). For each count it
writes that many tiny PNG files (``--side`` pixels square) into a temporary folder, runs
``python -m rps.predict MODEL <folder> --output <csv>`` in a process of its own and reports that
process's peak resident memory (``wait4``'s ``ru_maxrss``: the child alone), its wall time and
whether every file got its row. Flat peaks mean predicting streams; a peak that grows with the
count means decoded images pile up.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.processes import run_measured


def write_images(folder: Path, count: int, side: int) -> None:
    import numpy as np
    from PIL import Image

    from rps.synthetic import tiny_image

    rng = np.random.default_rng(0)
    shapes = [tiny_image(label, rng, side) for label in range(3)]  # three files' worth, written over and over
    for i in range(count):
        Image.fromarray(shapes[i % 3]).save(folder / f"{i:06d}.png")


def measure(model: str, folder: Path, output: Path, extra: list[str]) -> tuple[float, float, int]:
    """(peak RSS in MB, seconds, exit code) of one rps.predict process."""
    run = run_measured([sys.executable, "-m", "rps.predict", model, str(folder), "--output", str(output), *extra])
    if run.returncode not in (0, 1):
        raise RuntimeError(f"rps.predict failed ({run.returncode}): {run.stderr[-1500:]}")
    return run.peak_mb, run.seconds, run.returncode


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 3000, 30000])
    parser.add_argument("--side", type=int, default=32, help="each image's width and height in pixels (default 32)")
    args, extra = parser.parse_known_args(argv)  # the rest goes to rps.predict (e.g. --batch-size 64)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; "
          f"model {args.model}; {args.side}x{args.side} PNG files")
    print("| files | peak RSS (MB) | seconds | rows written |\n|---:|---:|---:|---:|")
    for count in args.counts:
        with tempfile.TemporaryDirectory(prefix="rps-predict-memory-") as tmp:
            folder, output = Path(tmp) / "images", Path(tmp) / "out.csv"
            folder.mkdir()
            write_images(folder, count, args.side)
            peak, seconds, _ = measure(args.model, folder, output, extra)
            rows = sum(1 for _ in open(output)) - 1
            print(f"| {count} | {peak:.0f} | {seconds:.1f} | {rows} |", flush=True)


if __name__ == "__main__":
    main()
