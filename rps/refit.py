"""Refit the choice of a sweep or study on every training example (the work: rps.runner.refit).

    python -m rps.refit <parent run id>                 # the sweep's or study's choice, refitted
    python -m rps.refit <run id>                        # a single run's config, refitted
    python -m rps.refit <run id> --register-model rps   # and register the refit's model
    python -m rps.refit <run id> --dry-run              # what would change, no run

The chosen run's config trains again with validation's images added to training
(``split.refit=true``) as a new run of the same experiment, tagged ``rps.refit_of``; its test
accuracy is reported once and chooses nothing. Exit code: 0 done, 2 nothing refitted (130/143 interrupted).
"""

from __future__ import annotations

import argparse
import sys

import rps  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from rps.common.errors import RpsError, Terminated, release_interrupted
from rps.common.quiet import run_tool
from rps.reproduce import _run_id
from rps.runner import refit


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a chosen rps config again on every training example.")
    parser.add_argument("run_id", type=_run_id, help="a sweep's or study's parent (its choice), or a single run")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db")
    parser.add_argument("--mlruns-dir", default="mlruns", help="the local store's folder (default mlruns)")
    parser.add_argument("--register-model", help="register the refit's model under this name")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from rps import tracking

    try:
        uri = tracking.use_store(args.tracking_uri, args.mlruns_dir)
        the_plan = refit.plan(args.run_id, uri, args.mlruns_dir)
        the_plan.cfg.register_model = args.register_model
        chosen = the_plan.chosen.info
        by = f" (the choice of {the_plan.parent.info.run_name}, made on validation)" if the_plan.parent else ""
        print(f"rps.refit: refitting run {chosen.run_id} ({chosen.run_name}){by}")
        for change in the_plan.changes:
            print(f"  {change}")
        if args.dry_run:
            return 0
        finished = refit.refit(the_plan)
    except RpsError as err:
        print(f"rps.refit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        release_interrupted(err)
        print("rps.refit: interrupted; the refit was marked KILLED.", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    test = tracking.get_run(finished.run_id).data.metrics.get("test_accuracy")
    print(f"rps.refit: run {finished.run_id}: test accuracy {test:.4f} (reported only; chosen on validation before)\n"
          f"rps.refit: use it: python -m rps.predict runs:/{finished.run_id} <images>")
    return 0


def cli() -> None:
    """The ``rps-refit`` command (also ``python -m rps.refit``)."""
    run_tool(main)


if __name__ == "__main__":
    cli()
