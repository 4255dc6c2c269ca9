"""Log a run whose tracking server stopped answering, once the server is back (rps.team.recover).

    python -m rps.recover mlruns/unsent/<folder>
    python -m rps.recover mlruns/unsent/<folder> --tracking-uri http://mlflow.example.org
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import rps  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from rps.common.quiet import run_command
from rps.common.errors import RpsError
from rps.team.recover import recover


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Log a run kept locally after its tracking server stopped answering.")
    parser.add_argument("folder", type=Path, help="the folder the run printed (mlruns/unsent/...)")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db")
    parser.add_argument("--mlruns-dir", default="mlruns", help="local store folder (default: mlruns)")
    args = parser.parse_args(argv)
    try:
        run_id = recover(args.folder, args.tracking_uri, args.mlruns_dir)
    except RpsError as err:
        print(f"rps.recover: error: {err}", file=sys.stderr)
        return 2
    print(f"Logged the kept run as MLflow run {run_id}; {args.folder} was removed.")
    return 0


def cli() -> None:
    """The ``rps-recover`` command (also ``python -m rps.recover``)."""
    run_command(main)


if __name__ == "__main__":
    cli()
