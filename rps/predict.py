"""Classify image files with a trained model (the work: rps.inference.predict).

    python -m rps.predict runs:/<run id> photos/ hand.jpg
    python -m rps.predict models:/rps-classifier/1 photos/ --output predictions.csv
    python -m rps.predict <downloaded model>/artifacts/saved_model photos/ --output out.json
    python -m rps.predict runs:/<run id>/export/model_int8.tflite photos/     # a format the run exported

The exit code is 1 when any file failed, 2 when the model or the inputs cannot be used at all,
0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import rps  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from rps.common.errors import ResourceError, RpsError
from rps.data.sources import PREDICT_EXTENSIONS
from rps.common.quiet import quiet_tensorflow_startup
from rps.tracking.models import local_model
from rps.inference.predict import _table, image_files, load_predictor, predict_files, write_output


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify image files with a trained rps model.")
    parser.add_argument("model", help="runs:/<run id>, models:/<name>/<version>, an MLflow model folder, "
                                      "a run's exported SavedModel directory, or a .tflite file it exported "
                                      "(runs:/<run id>/export/model_<format>.tflite, or a local path)")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--output", type=Path, help="also write the predictions to this .csv or .json file")
    parser.add_argument("--batch-size", type=_positive, default=32, help="images per model call (default 32)")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rps-model-") as tmp:  # a downloaded model lives here meanwhile
        return _predict(args, Path(tmp))


def _predict(args: argparse.Namespace, tmp: Path) -> int:
    try:
        if args.output and not args.output.parent.resolve().is_dir():
            raise ResourceError(f"--output {args.output}: the folder {args.output.parent} does not exist.")
        files = image_files(args.inputs)
        if not files:
            raise ResourceError(f"No image files in {', '.join(args.inputs)} (looked for {', '.join(sorted(PREDICT_EXTENSIONS))}).")
        predictor = load_predictor(local_model(args.model, args.tracking_uri, into=tmp))
    except RpsError as err:
        print(f"rps.predict: error: {err}", file=sys.stderr)
        return 2
    start = time.monotonic()
    rows, failed = predict_files(predictor, files, args.batch_size, progress=sys.stdout.isatty())
    seconds = time.monotonic() - start
    print(_table(rows))
    print(f"rps.predict: {len(rows)} images in {seconds:.2f} s after loading the model "
          f"({len(rows) / max(seconds, 1e-9):.0f} images/s, reading included; engine: {predictor.engine})", file=sys.stderr)
    for path, reason in failed:
        print(f"rps.predict: skipped {path}: cannot decode it as an image ({reason})", file=sys.stderr)
    if args.output:
        write_output(rows, args.output)
        print(f"\n{len(rows)} predictions written to {args.output}")
    if failed:
        print(f"rps.predict: {len(failed)} of {len(files)} file(s) failed.", file=sys.stderr)
    return 1 if failed else 0


def cli() -> None:
    """The ``rps-predict`` command (also ``python -m rps.predict``)."""
    quiet_tensorflow_startup()
    sys.exit(main())


if __name__ == "__main__":
    cli()
