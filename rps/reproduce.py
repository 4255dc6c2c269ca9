"""Rerun a logged run and check its numbers (the work: rps.runner.reproduce).

    python -m rps.reproduce <run id>                       # the store under ./mlruns
    python -m rps.reproduce <run id> --tracking-uri http://tracking:5000 --tolerance 0.02
    python -m rps.reproduce <run id> --dry-run             # the differences only, no rerun

It prints what differs between the environment the run recorded and this one (machine, Python,
packages, commit, uncommitted diff), reruns the run's config as a new run tagged
``rps.reproduces=<run id>``, then compares data and backbone digests and metrics: bit for bit on
the same machine with the same code, the accuracies within ``--tolerance`` otherwise.
Exit code: 0 the numbers match, 1 they do not, 2 the run could not be rerun (130/143 interrupted).
"""

from __future__ import annotations

import argparse
import sys

import rps  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from rps.common.errors import RpsError, Terminated, release_interrupted
from rps.common.quiet import run_tool
from rps.runner import reproduce


def _tolerance(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (an absolute accuracy difference), not {value}")
    return value


def _run_id(text: str) -> str:
    if len(text) != 32 or any(c not in "0123456789abcdef" for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an MLflow run id (32 hexadecimal characters)")
    return text


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Rerun a logged rps run and check that its numbers come back.")
    parser.add_argument("run_id", type=_run_id, help="the run to reproduce (32 hex characters)")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db")
    parser.add_argument("--mlruns-dir", default="mlruns", help="the local store's folder (default mlruns)")
    parser.add_argument("--tolerance", type=_tolerance, default=reproduce.DEFAULT_TOLERANCE,
                        help=f"largest accepted accuracy difference on another machine or code "
                             f"(default {reproduce.DEFAULT_TOLERANCE})")
    parser.add_argument("--dry-run", action="store_true", help="print the differences and stop (exit 0)")
    return parser.parse_args(argv)


def _print_plan(the_plan: reproduce.Plan, tolerance: float) -> None:
    run = the_plan.run
    print(f"rps.reproduce: run {run.info.run_id} ({run.info.run_name})")
    print("Environment, recorded -> now:" if the_plan.differences else "Environment: no difference")
    for what, then, now in the_plan.differences:
        print(f"  {what}: {then} -> {now}")
    if the_plan.exact:
        print(f"Expected: bit-exact ({reproduce.EXPECTATION})")
    else:
        why = [what for what, same in (("another machine or environment", the_plan.same_machine),
                                       ("other code", the_plan.same_code)) if not same]
        print(f"Expected: accuracies within {tolerance} ({' and '.join(why)}: bit-exactness needs the "
              f"{reproduce.EXPECTATION})")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from rps import tracking

    try:
        uri = tracking.use_store(args.tracking_uri, args.mlruns_dir)
        the_plan = reproduce.plan(args.run_id, uri, args.mlruns_dir)
        _print_plan(the_plan, args.tolerance)
        if args.dry_run:
            return reproduce.MATCH
        finished = reproduce.rerun(the_plan)
    except RpsError as err:
        print(f"rps.reproduce: error: {err}", file=sys.stderr)
        return reproduce.NOT_RERUN
    except KeyboardInterrupt as err:
        release_interrupted(err)
        print("rps.reproduce: interrupted; the rerun was marked KILLED.", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    verdict = reproduce.judge(the_plan, tracking.get_run(finished.run_id), args.tolerance)
    text = reproduce.markdown(the_plan, verdict)
    reproduce.record_verdict(finished.run_id, verdict, text)
    print("\n" + text)
    print(f"rps.reproduce: {verdict.summary}\nrps.reproduce: the rerun is run {finished.run_id} "
          f"(tag {reproduce.REPRODUCES_TAG}={args.run_id})")
    return verdict.code


def cli() -> None:
    """The ``rps-reproduce`` command (also ``python -m rps.reproduce``)."""
    run_tool(main)


if __name__ == "__main__":
    cli()
