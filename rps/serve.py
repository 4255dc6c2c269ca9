"""Serve a trained model over HTTP, verified first (the work: rps.tracking.models, rps.inference.serving).

    python -m rps.serve runs:/<run id>
    python -m rps.serve models:/rps-classifier/1 --host 127.0.0.1 --port 5001 --max-pixels 20000000

The model is downloaded and its files checked against the manifest its run recorded before
anything in it is loaded (a mismatch: exit 2, nothing run); then MLflow's own scoring server
(``mlflow models serve --env-manager local``) serves the checked copy. POST photos (base64 in
JSON) to ``/invocations``; a bad or oversize image gets HTTP 400 naming the item.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import rps  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from rps.common.errors import RpsError, Terminated, interrupt_on_signals
from rps.common.quiet import run_command
from rps.inference.serving import check_port, check_servable, serve
from rps.predict import model_arguments, positive
from rps.tracking.models import local_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a trained rps model over HTTP (MLflow's scoring server).")
    model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=positive, default=5001, help="default 5001")
    parser.add_argument("--workers", type=positive, default=1, help="server processes, each holding the model (default 1)")
    args = parser.parse_args(argv)
    interrupt_on_signals()
    with tempfile.TemporaryDirectory(prefix="rps-serve-") as tmp:  # the checked copy lives here while served
        try:
            check_port(args.host, args.port)
            folder = local_model(args.model, args.tracking_uri, into=Path(tmp), trust_unverified=args.trust_unverified)
            check_servable(folder)
        except RpsError as err:
            print(f"rps.serve: error: {err}", file=sys.stderr)
            return 2
        print(f"rps.serve: serving {args.model} (checked copy: {folder}) at http://{args.host}:{args.port}/invocations; "
              "Ctrl-C stops it.", file=sys.stderr, flush=True)
        try:
            return serve(folder, args.host, args.port, args.max_pixels, args.workers)
        except KeyboardInterrupt as err:
            print("rps.serve: stopped.", file=sys.stderr)
            return 143 if isinstance(err, Terminated) else 130


def cli() -> None:
    """The ``rps-serve`` command (also ``python -m rps.serve``)."""
    run_command(main)


if __name__ == "__main__":
    cli()
