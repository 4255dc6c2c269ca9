"""Average a sweep's models into one (the work: rps.runner.ensemble, rps.training.ensemble).

    python -m rps.ensemble <parent run id>                 # its finished children's models, averaged
    python -m rps.ensemble <parent run id> --flip          # and each on the mirrored image too (TTA)
    python -m rps.ensemble <parent run id> --register-model rps-ensemble
    python -m rps.ensemble <run id> <run id> ...           # these runs (say, the refits of a seed sweep)

Logs a new run of the parent's experiment (tag ``rps.ensemble_of``) whose model predicts and
serves like any run's (``python -m rps.predict runs:/<id> ...``), with the test accuracy and the
measured cost (forward passes, ms per image) of one member, one member + flip, the ensemble and
the ensemble + flip in ``eval/ensemble.md``. Exit code: 0 done, 2 nothing built (130/143 interrupted).
"""

from __future__ import annotations

import argparse
import sys

import rps  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from rps.common.errors import RpsError, Terminated, release_interrupted
from rps.common.quiet import run_tool
from rps.reproduce import _run_id
from rps.runner import ensemble


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Average the models of a sweep's children into one logged model.")
    parser.add_argument("run_ids", type=_run_id, nargs="+",
                        help="a sweep's parent run id (its children are the members), or two or more members' run ids")
    parser.add_argument("--flip", action="store_true", help="test-time augmentation: also average each member's "
                                                            "prediction of the horizontally mirrored image")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db")
    parser.add_argument("--mlruns-dir", default="mlruns", help="the local store's folder (default mlruns)")
    parser.add_argument("--register-model", help="register the ensemble's model under this name")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from rps import tracking

    try:
        uri = tracking.use_store(args.tracking_uri, args.mlruns_dir)
        the_plan = ensemble.plan(args.run_ids, uri)
        of = f" of {the_plan.parent.info.run_name}" if the_plan.parent else ""
        print(f"rps.ensemble: {len(the_plan.members)} members{of}{' with the flip' if args.flip else ''}")
        run_id, table = ensemble.build(the_plan, args.flip, args.register_model, uri, args.mlruns_dir)
    except RpsError as err:
        print(f"rps.ensemble: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        release_interrupted(err)
        print("rps.ensemble: interrupted; the ensemble's run was marked KILLED.", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    print(table)
    print(f"rps.ensemble: run {run_id}; use it: python -m rps.predict runs:/{run_id} <images>")
    return 0


def cli() -> None:
    """The ``rps-ensemble`` command (also ``python -m rps.ensemble``)."""
    run_tool(main)


if __name__ == "__main__":
    cli()
