"""Tables of runs (a sweep's jobs, a leaderboard): rows, markdown, CSV, mean and spread, and the
one rule that picks a best run — on validation only (pure Python; no MLflow import).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from typing import Any, Optional

from rps.training.outcome import OBJECTIVE, OBJECTIVE_LOSS, objective_loss_of, objective_of

# How choose_best ranks finished runs (logged with the choice as the tag `best_chosen_by`).
CHOSEN_BY = f"{OBJECTIVE} (max), then {OBJECTIVE_LOSS} (min), then epochs_trained (min), then start order"


def run_row(run, keys: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """One MLflow run as a table row: name, status, the given params, the validation metrics it
    is chosen by, its test accuracy (reported), id and error."""
    metrics = run.data.metrics
    row = {"run_name": run.info.run_name, "status": run.info.status}
    row |= {key: run.data.params.get(key, "") for key in keys}
    row |= {OBJECTIVE: objective_of(metrics), OBJECTIVE_LOSS: objective_loss_of(metrics)}  # (older runs: legacy names)
    row |= {name: metrics.get(name) for name in ("epochs_trained", "test_accuracy")}
    if row["epochs_trained"] is not None:  # MLflow stores every metric as a float
        row["epochs_trained"] = int(row["epochs_trained"])
    row["run_id"] = run.info.run_id
    row["error"] = run.data.tags.get("error", "")
    return row


def _or_inf(value: Optional[float]) -> float:
    return math.inf if value is None else value


def rank_key(row: dict[str, Any]) -> tuple:
    """Sorts rows best first by :data:`CHOSEN_BY` (rows without a validation accuracy last).

    Test metrics never enter: relabelling the test split cannot change a ranking or a choice.
    """
    accuracy = row[OBJECTIVE]
    return (accuracy is None, -(accuracy or 0.0), _or_inf(row.get(OBJECTIVE_LOSS)), _or_inf(row.get("epochs_trained")))


def choose_best(table: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The best finished row by :func:`rank_key` (rows in start order); None if none finished."""
    finished = [r for r in table if r["status"] == "FINISHED" and r[OBJECTIVE] is not None]
    return min(finished, default=None, key=rank_key)


def runner_up(table: list[dict[str, Any]], best: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The best finished row after ``best`` (the one the choice beat), or None."""
    rest = [r for r in table if r is not best and r["status"] == "FINISHED" and r[OBJECTIVE] is not None]
    return min(rest, default=None, key=rank_key)


def _value(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def decided_by(best: dict[str, Any], second: dict[str, Any]) -> str:
    """Which step of :data:`CHOSEN_BY` separated the chosen row from the runner-up."""
    tied = []
    for key in (OBJECTIVE, OBJECTIVE_LOSS, "epochs_trained"):
        if best.get(key) != second.get(key):
            lead = f"tied on {' and '.join(tied)}; " if tied else ""
            return f"{lead}decided by {key} ({_value(best, key)} against {_value(second, key)})"
        tied.append(key)
    return f"tied on {', '.join(tied)}; decided by start order (it started first)"


def choice_lines(table: list[dict[str, Any]], best: dict[str, Any], rerun: Optional[str],
                 model: Optional[str]) -> list[str]:
    """What was chosen and why, in words: the chosen row and its objective, the runner-up's, the
    rule (on validation only), where its model is and the command that trains it again."""
    lines = [f"Chosen: {best['run_name']} (run {best['run_id']}), {OBJECTIVE} {_value(best, OBJECTIVE)}"]
    second = runner_up(table, best)
    if second is not None:
        lines.append(f"Runner-up: {second['run_name']}, {OBJECTIVE} {_value(second, OBJECTIVE)}: "
                     f"{decided_by(best, second)}")
    lines.append(f"Rule: {CHOSEN_BY}; on validation only: the test split was not looked at "
                 "(its accuracy is reported beside it)")
    lines.append(f"Its model: {model}" if model else "Its model: none logged (export.model=false): rerun it")
    if rerun:
        lines.append(f"Rerun it alone, with its model: {rerun}")
    return lines


def markdown(table: list[dict[str, Any]]) -> str:
    if not table:
        return "(no jobs)\n"
    header = list(table[0])

    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str("" if value is None else value).replace("|", "/")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(row[h]) for h in header) + " |" for row in table]
    return "\n".join(lines) + "\n"


def to_csv(table: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    if table:
        writer = csv.DictWriter(out, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    return out.getvalue()


def sweep_stats(table: list[dict[str, Any]]) -> dict[str, float]:
    """Mean and sample standard deviation (two jobs or more) of the validation and test accuracy
    over the finished jobs, and their number: a sweep over seeds is read by these."""
    finished = [r for r in table if r["status"] == "FINISHED"]
    stats: dict[str, float] = {"n_finished": len(finished)}
    for key in (OBJECTIVE, "test_accuracy"):
        values = [r[key] for r in finished if r[key] is not None]
        if values:
            stats[f"mean_{key}"] = statistics.fmean(values)
        if len(values) >= 2:
            stats[f"std_{key}"] = statistics.stdev(values)
    return stats


def stats_line(table: list[dict[str, Any]]) -> str:
    """``mean selection_val_accuracy 0.9900 ± 0.0100, test_accuracy 0.9740 ± 0.0450 (reported only;
    sample std) over 3 finished jobs``, or nothing."""
    stats = sweep_stats(table)
    if f"mean_{OBJECTIVE}" not in stats and "mean_test_accuracy" not in stats:
        return ""

    def part(key: str) -> str:
        if f"mean_{key}" not in stats:
            return f"{key} -"
        std = f" ± {stats[f'std_{key}']:.4f}" if f"std_{key}" in stats else ""
        return f"{key} {stats[f'mean_{key}']:.4f}{std}"

    n = stats["n_finished"]
    spread = "; sample std" if any(k.startswith("std_") for k in stats) else ""
    return (f"\nmean {part(OBJECTIVE)}, {part('test_accuracy')} (reported only{spread}) "
            f"over {n} finished job{'s' * (n != 1)}\n")
