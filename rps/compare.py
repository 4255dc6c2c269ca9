"""Leaderboard of runs from the tracking store, best first.

    python -m rps.compare                          # every run of experiment "rps"
    python -m rps.compare --experiment sweep_dropout_lr
    python -m rps.compare --sweep <parent run id>  # the jobs of one sweep
    python -m rps.compare --tracking-uri http://127.0.0.1:5000 --sort test_accuracy

Reads the same store the runner writes: ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``,
else ``sqlite:///mlruns/mlflow.db`` under the current directory (a tracking server works too).
Runs are ranked as a sweep picks its best (validation accuracy, then validation loss, then
fewer epochs); ``--sort test_accuracy`` ranks by the test split instead, for reporting only.
Sweep parent runs are left out of experiment listings; their children are listed, and each
sweep's mean accuracies (± sample std) over its finished jobs follow the table. Runs left
RUNNING by processes that died are marked FAILED first (see ``rps.tracking.runs``).
"""

from __future__ import annotations

import argparse
import sys

from rps.summary import CHOSEN_BY, markdown, rank_key, run_row, stats_line
from rps.tracking.runs import PARENT_TAG

COLUMNS = ("head.dropout", "optimizer.name", "optimizer.lr", "split.kind", "seed", "epochs")


def leaderboard(runs: list, sort: str) -> list[dict]:
    """Rows of the runs (sweep parents left out), best first, ranked."""
    table = []
    for run in runs:
        if run.data.tags.get("sweep") == "parent":
            continue
        row = {"rank": 0} | run_row(run, COLUMNS)
        row["sweep"] = run.data.tags.get(PARENT_TAG, "")[:8]
        table.append(row)
    if sort == "test_accuracy":
        table.sort(key=lambda r: (r["test_accuracy"] is None, -(r["test_accuracy"] or 0.0)))
    else:
        table.sort(key=rank_key)
    for rank, row in enumerate(table, 1):
        row["rank"] = rank
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Leaderboard of rps runs from the MLflow store.")
    parser.add_argument("--experiment", default="rps", help="experiment name (default: rps)")
    parser.add_argument("--sweep", metavar="RUN_ID", help="list the jobs of this sweep (parent run id)")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db")
    parser.add_argument("--mlruns-dir", default="mlruns", help="local store folder (default: mlruns)")
    parser.add_argument("--sort", default="best_val_accuracy", choices=("best_val_accuracy", "test_accuracy"),
                        help="best_val_accuracy (default): as a sweep chooses; test_accuracy: for reporting only")
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
    order = CHOSEN_BY if args.sort == "best_val_accuracy" else "test_accuracy (reporting only: choose runs on validation)"
    print(f"{title}: {len(table)} runs ({tracking.redact(uri)}), ranked by {order}\n")
    print(markdown(table), end="")
    for sweep in sorted({row["sweep"] for row in table if row["sweep"]}):
        line = stats_line([row for row in table if row["sweep"] == sweep]).strip()
        if line:
            print(f"sweep {sweep}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
