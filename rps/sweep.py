"""Hydra multirun sweeps as one MLflow parent run with every job as a nested child run.

``MlflowSweepCallback`` (registered in ``conf/config.yaml``) opens the parent run when a
multirun starts and writes its id into the sweep directory, where every job finds it, whichever
launcher runs the jobs (in-process, or joblib worker processes). When the sweep ends it marks
children that died RUNNING as KILLED, writes the summary (CSV + markdown table, an accuracy plot,
``best_*`` metrics chosen by validation accuracy, the best child's run id as a tag) and closes
the parent. A failed child fails alone; the summary lists it and the sweep exits non-zero.
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import logging
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

SWEEP_FILE = "mlflow_sweep.json"  # in the sweep dir: the parent run id and the swept keys
PARENT_TAG = "mlflow.parentRunId"
SWEEP_VALUE = re.compile(r"^(range|choice|interval|glob)\(|,")


def sweep_params(overrides: list[str]) -> dict[str, str]:
    """``["head.dropout=0.2,0.5", "+experiment=x"]`` -> ``{"sweep.head.dropout": "0.2,0.5", ...}``."""
    out = {}
    for item in overrides:
        key, _, value = item.partition("=")
        out[f"sweep.{key.lstrip('+~')}"] = value
    return out


def varying_keys(config: DictConfig) -> list[str]:
    """The keys a sweep varies: command-line sweeps (``a=1,2``, ``range(...)``...) and
    ``hydra.sweeper.params`` (named experiments, the Optuna sweeper's search space)."""
    keys = []
    for item in config.hydra.overrides.task:
        key, _, value = item.partition("=")
        if SWEEP_VALUE.search(value):
            keys.append(key.lstrip("+~"))
    params = config.hydra.sweeper.get("params") or {}
    return keys + [str(k).lstrip("+~") for k in params if str(k).lstrip("+~") not in keys]


def child_run_name(job_overrides: list[str], keys: list[str]) -> str:
    """``["head.dropout=0.2", "optimizer.lr=0.001", "epochs=1"]`` -> ``"dropout=0.2 lr=0.001"``
    (only the swept keys, when known)."""
    parts = []
    for item in job_overrides:
        key, _, value = item.partition("=")
        key = key.lstrip("+~")
        if key in keys or not keys:
            parts.append(f"{key.split('.')[-1]}={value}")
    return " ".join(parts) or "default"


def sweep_context(sweep_dir: str | Path) -> tuple[Optional[str], list[str]]:
    """(parent run id, swept keys) that the sweep's callback left for its jobs."""
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        return None, []
    info = json.loads(path.read_text())
    return info["parent_run_id"], info["keys"]


class MlflowSweepCallback(Callback):
    """Parent run per multirun; summary at its end. Does nothing for single runs."""

    def __init__(self) -> None:
        self.parent_id: Optional[str] = None
        self.finished = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exception into a warning and runs the jobs anyway: a sweep
        # that cannot be tracked must stop here instead, with a non-zero exit.
        try:
            self._open_parent(config)
        except Exception as err:
            print(f"rps: error: cannot start the sweep's MLflow run: {err}", file=sys.stderr)
            sys.exit(2)

    def _open_parent(self, config: DictConfig) -> None:
        import mlflow

        from rps import tracking

        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        experiment_id = tracking.setup_experiment(config)
        overrides = list(config.hydra.overrides.task)
        client = mlflow.MlflowClient()
        name = config.get("run_name") or f"sweep {sweep_dir.name}"
        run = client.create_run(experiment_id, run_name=name, tags=tracking.environment_tags() | {"sweep": "parent"})
        self.parent_id = run.info.run_id
        client.log_batch(self.parent_id, params=[
            mlflow.entities.Param(k, str(v)) for k, v in (sweep_params(overrides) | {
                "sweeper": config.hydra.sweeper.get("_target_", "?"),
                "launcher": config.hydra.launcher.get("_target_", "?"),
                "sweep_dir": str(sweep_dir.resolve()),
            }).items()
        ])
        keys = varying_keys(config)
        client.set_tag(self.parent_id, "sweep.keys", ",".join(keys))
        (sweep_dir / SWEEP_FILE).write_text(json.dumps({"parent_run_id": self.parent_id, "keys": keys}))
        atexit.register(self._abandon)
        log.info("MLflow sweep run %s (children nest under it)", self.parent_id)

    def _abandon(self) -> None:
        """At exit without a summary (Ctrl-C, a crash): the parent must not stay RUNNING."""
        if self.parent_id and not self.finished:
            import mlflow

            mlflow.MlflowClient().set_terminated(self.parent_id, "KILLED")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.parent_id:
            return
        try:
            failed = summarize(self.parent_id)
        except Exception as err:
            print(f"rps: error: the sweep's summary could not be written: {err}", file=sys.stderr)
            sys.exit(1)  # the parent run is then marked KILLED at exit
        self.finished = True
        if failed:
            print(f"rps: {failed} sweep job(s) failed; see the sweep run's summary.md.", file=sys.stderr)
            sys.exit(1)


# --------------------------------------------------------------------------- summary


def child_runs(client, parent_id: str) -> list:
    parent = client.get_run(parent_id)
    return client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'",
        order_by=["attributes.start_time ASC"], max_results=10000,
    )


def swept_keys(parent) -> list[str]:
    return [k for k in parent.data.tags.get("sweep.keys", "").split(",") if k]


def run_row(run, keys: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """One run as a table row: name, status, the given params, accuracies, id, error."""
    row = {"run_name": run.info.run_name, "status": run.info.status}
    row |= {key: run.data.params.get(key, "") for key in keys}
    row["best_val_accuracy"] = run.data.metrics.get("best_val_accuracy")
    row["test_accuracy"] = run.data.metrics.get("test_accuracy")
    row["run_id"] = run.info.run_id
    row["error"] = run.data.tags.get("error", "")
    return row


def markdown(table: list[dict[str, Any]]) -> str:
    if not table:
        return "(no jobs)\n"
    header = list(table[0])

    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str("" if value is None else value).replace("|", "/")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(row[h]) for h in header) + " |" for row in table]
    return "\n".join(lines) + "\n"


def sweep_stats(table: list[dict[str, Any]]) -> dict[str, float]:
    """Mean and sample standard deviation (two jobs or more) of each accuracy over the finished
    jobs, and their number: a sweep over seeds is read by these."""
    finished = [r for r in table if r["status"] == "FINISHED"]
    stats: dict[str, float] = {"n_finished": len(finished)}
    for key in ("test_accuracy", "best_val_accuracy"):
        values = [r[key] for r in finished if r[key] is not None]
        if values:
            stats[f"mean_{key}"] = statistics.fmean(values)
        if len(values) >= 2:
            stats[f"std_{key}"] = statistics.stdev(values)
    return stats


def stats_line(table: list[dict[str, Any]]) -> str:
    """``mean test_accuracy 0.9740 ± 0.0450 (sample std) over 3 finished jobs``, or nothing."""
    stats = sweep_stats(table)
    if "mean_test_accuracy" not in stats:
        return ""
    std = f" ± {stats['std_test_accuracy']:.4f} (sample std)" if "std_test_accuracy" in stats else ""
    n = stats["n_finished"]
    return f"\nmean test_accuracy {stats['mean_test_accuracy']:.4f}{std} over {n} finished job{'s' * (n != 1)}\n"


def to_csv(table: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    if table:
        writer = csv.DictWriter(out, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    return out.getvalue()


def summarize(parent_id: str) -> int:
    """Write the sweep summary into the parent run and close it; returns the number of failures."""
    import mlflow

    from rps import plots

    client = mlflow.MlflowClient()
    for run in child_runs(client, parent_id):
        if run.info.status == "RUNNING":  # its process died without closing it
            client.set_terminated(run.info.run_id, "KILLED")
    children = child_runs(client, parent_id)
    keys = swept_keys(client.get_run(parent_id))
    table = [run_row(run, keys) for run in children]
    client.log_text(parent_id, to_csv(table), "summary/summary.csv")
    client.log_text(parent_id, markdown(table) + stats_line(table), "summary/summary.md")
    fig = plots.sweep_accuracy(table, keys)
    client.log_figure(parent_id, fig, "summary/accuracy.png")
    plots.close(fig)
    finished = [r for r in table if r["status"] == "FINISHED" and r["best_val_accuracy"] is not None]
    failed = [r for r in table if r["status"] != "FINISHED"]
    client.log_metric(parent_id, "n_children", len(table))
    client.log_metric(parent_id, "n_failed", len(failed))
    for name, value in sweep_stats(table).items():
        client.log_metric(parent_id, name, value)
    if finished:
        # chosen on validation accuracy (test accuracy breaks ties, then the first started job)
        best = max(finished, key=lambda r: (r["best_val_accuracy"], r["test_accuracy"] or 0))
        client.log_metric(parent_id, "best_val_accuracy", best["best_val_accuracy"])
        client.log_metric(parent_id, "best_test_accuracy", best["test_accuracy"])
        client.set_tag(parent_id, "best_run_id", best["run_id"])
        client.set_tag(parent_id, "best_run_name", best["run_name"])
    client.set_terminated(parent_id, "FINISHED")
    print(f"\nSweep {parent_id}: {len(table)} jobs, {len(failed)} failed\n{markdown(table)}{stats_line(table)}")
    return len(failed)
