"""Leaderboard of runs from the tracking store, best first (the ranking: rps.search.leaderboard).

    python -m rps.compare                          # every run of experiment "rps"
    python -m rps.compare --experiment sweep_dropout_lr
    python -m rps.compare --sweep <parent run id>  # the jobs of one sweep
    python -m rps.compare --tracking-uri http://127.0.0.1:5000 --sort test_accuracy
"""

from __future__ import annotations

import argparse
import sys

import rps  # noqa: F401
from rps.common.files import private_files
from rps.search.leaderboard import leaderboard
from rps.search.summary import CHOSEN_BY, markdown, stats_line
from rps.training.outcome import OBJECTIVE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Leaderboard of rps runs from the MLflow store.")
    parser.add_argument("--experiment", default="rps", help="experiment name (default: rps)")
    parser.add_argument("--sweep", metavar="RUN_ID", help="list the jobs of this sweep (parent run id)")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db")
    parser.add_argument("--mlruns-dir", default="mlruns", help="local store folder (default: mlruns)")
    parser.add_argument("--sort", default=OBJECTIVE, choices=(OBJECTIVE, "test_accuracy"),
                        help=f"{OBJECTIVE} (default): as a sweep chooses; test_accuracy: for reporting only")
    args = parser.parse_args(argv)

    import mlflow

    from rps import tracking

    uri = tracking.use_store(args.tracking_uri, args.mlruns_dir)
    client = mlflow.MlflowClient()
    if args.sweep:
        try:
            runs = tracking.child_runs(args.sweep, client)
        except mlflow.exceptions.MlflowException as err:
            print(f"rps.compare: no sweep run {args.sweep} in {uri} ({err.error_code}).", file=sys.stderr)
            return 2
        title = f"sweep {args.sweep}"
    else:
        experiment = client.get_experiment_by_name(args.experiment)
        if experiment is None:
            names = ", ".join(e.name for e in client.search_experiments()) or "none"
            print(f"rps.compare: no experiment '{args.experiment}' in {uri} (there: {names}).", file=sys.stderr)
            return 2
        tracking.reap_stale_runs([experiment.experiment_id], client)
        runs = client.search_runs([experiment.experiment_id], max_results=10000)
        title = f"experiment {args.experiment}"
    table = leaderboard(runs, args.sort)
    order = CHOSEN_BY if args.sort == OBJECTIVE else "test_accuracy (reporting only: choose runs on validation)"
    print(f"{title}: {len(table)} runs ({tracking.redact(uri)}), ranked by {order}\n")
    print(markdown(table), end="")
    for sweep in sorted({row["sweep"] for row in table if row["sweep"]}):
        line = stats_line([row for row in table if row["sweep"] == sweep]).strip()
        if line:
            print(f"sweep {sweep}: {line}")
    return 0


def cli() -> None:
    """The ``rps-compare`` command (also ``python -m rps.compare``)."""
    private_files()  # a local store it creates is this user's only
    sys.exit(main())


if __name__ == "__main__":
    cli()
