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


from rps.search.summary import rank_key, run_row
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
