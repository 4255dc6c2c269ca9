"""Classify image files with a trained model (the work: rps.inference.predict).

    python -m rps.predict runs:/<run id> photos/ hand.jpg
    python -m rps.predict models:/rps-classifier/1 photos/ --output predictions.csv
    python -m rps.predict <downloaded model>/artifacts/saved_model photos/ --output out.json
    python -m rps.predict runs:/<run id>/export/model_int8.tflite photos/     # a format the run exported

A logged model is checked against the manifest its run recorded before it is loaded
(rps.tracking.models). The exit code is 1 when any file failed, 2 when the model or the inputs
cannot be used at all (a model that fails its check included), 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import rps  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from rps.common.errors import ResourceError, RpsError
from rps.common.quiet import run_command
from rps.data.images import DEFAULT_MAX_PIXELS
from rps.data.sources import PREDICT_EXTENSIONS
from rps.inference.predict import TableWriter, check_output, image_files, load_predictor, output_file, predictions
from rps.tracking.models import local_model


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def model_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments rps.predict and rps.serve share: which model, from where, how far to trust it."""
    parser.add_argument("model", help="runs:/<run id>, models:/<name>/<version>, an MLflow model folder, "
                                      "a run's exported SavedModel directory, or a .tflite file it exported "
                                      "(runs:/<run id>/export/model_<format>.tflite, or a local path)")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db")
    parser.add_argument("--max-pixels", type=positive, default=DEFAULT_MAX_PIXELS,
                        help="images whose header declares more pixels are refused, never decoded (default 50000000)")
    parser.add_argument("--trust-unverified", action="store_true",
                        help="load a model whose run recorded no manifest (logged before rps checked models); "
                             "a model whose files differ from its manifest is refused regardless")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify image files with a trained rps model.")
    model_arguments(parser)
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--output", type=Path, help="also write the predictions to this .csv or .json file")
    parser.add_argument("--batch-size", type=positive, default=32, help="images per model call (default 32)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rps-model-") as tmp:  # a downloaded model lives here meanwhile
        return _predict(args, Path(tmp))


def _predict(args: argparse.Namespace, tmp: Path) -> int:
    try:
        check_output(args.output)
        files = image_files(args.inputs)
        if not files:
            raise ResourceError(f"No image files in {', '.join(args.inputs)} (looked for {', '.join(sorted(PREDICT_EXTENSIONS))}).")
        predictor = load_predictor(local_model(args.model, args.tracking_uri, into=tmp,
                                               trust_unverified=args.trust_unverified))
    except RpsError as err:
        print(f"rps.predict: error: {err}", file=sys.stderr)
        return 2
    start, rows, failed = time.monotonic(), 0, 0
    with ExitStack() as outputs:
        writers = [TableWriter(sys.stdout, predictor.class_names, files)]
        if args.output:
            writers.append(outputs.enter_context(output_file(args.output, predictor.class_names)))
        for path, row, error in predictions(predictor, files, args.batch_size, args.max_pixels,
                                            progress=sys.stdout.isatty()):
            if error is not None:
                print(f"rps.predict: skipped {path}: {error}", file=sys.stderr)
                failed += 1
                continue
            for writer in writers:
                writer.write(row)
            rows += 1
        writers[0].close()
    seconds = time.monotonic() - start
    print(f"rps.predict: {rows} images in {seconds:.2f} s after loading the model "
          f"({rows / max(seconds, 1e-9):.0f} images/s, reading included; engine: {predictor.engine})", file=sys.stderr)
    if args.output:
        print(f"\n{rows} predictions written to {args.output}")
    if failed:
        print(f"rps.predict: {failed} of {len(files)} file(s) failed.", file=sys.stderr)
    return 1 if failed else 0


def cli() -> None:
    """The ``rps-predict`` command (also ``python -m rps.predict``)."""
    run_command(main)


if __name__ == "__main__":
    cli()
