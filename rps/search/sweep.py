"""Hydra multirun sweeps as one MLflow parent run with every job as a nested child run.

``MlflowSweepCallback`` (registered in ``conf/config.yaml``) opens the parent run when a
multirun starts and adds ``parent_run_id=<its id>`` to the overrides every job is composed with,
so the id travels inside each job's config to whatever process or machine runs it (basic,
joblib, submitit or Ray launchers). When the sweep ends it marks children that died RUNNING as
KILLED, writes the summary (CSV + markdown table, an accuracy plot, the best job chosen on
validation accuracy, mean and spread over the finished jobs) and closes the parent. A failed
child fails alone; the summary lists it and the sweep exits non-zero.
"""

from __future__ import annotations

import atexit
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, read_write

from rps.runner.names import PARENT_KEY, swept_keys
from rps.common.quiet import quiet_libraries
from rps.search import summary

log = logging.getLogger(__name__)

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


def _quoted(value: str) -> str:
    """A value as a Hydra override understands it, whatever characters a path holds."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def expected_jobs(config: DictConfig, overrides: list[str]) -> Optional[int]:
    """How many jobs Hydra's basic sweeper will launch (None for other sweepers or open intervals)."""
    if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    count = 1
    try:
        for override in OverridesParser.create().parse_overrides(overrides + params):
            if override.is_sweep_override():
                count *= len(list(override.sweep_string_iterator()))
    except Exception:  # interval sweeps and other forms a basic sweeper cannot enumerate
        return None
    return count


class MlflowSweepCallback(Callback):
    """Parent run per multirun; summary at its end. Does nothing for single runs."""

    def __init__(self) -> None:
        self.parent_id: Optional[str] = None
        self.heartbeat = None
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
        from rps import tracking
        from rps.tracking.runs import Heartbeat

        quiet_libraries()  # MLflow creating its tables, say
        sweep_dir = Path(config.hydra.sweep.dir)
        experiment_id = tracking.setup_experiment(config)
        # What every job must see the same way, wherever it runs: the parent, the store, the folder.
        pinned = {PARENT_KEY: None, "tracking_uri": tracking.resolve_tracking_uri(config.tracking_uri, config.mlruns_dir)[0],
                  "mlruns_dir": str(Path(config.mlruns_dir).expanduser().resolve())}
        overrides = [o for o in config.hydra.overrides.task if o.partition("=")[0].lstrip("+~") not in pinned]
        keys = varying_keys(config)
        tags = {"sweep": "parent", "sweep.keys": ",".join(keys)}
        expected = expected_jobs(config, overrides)
        if expected is not None:
            tags["sweep.expected_jobs"] = str(expected)
        if config.get(PARENT_KEY):  # the sweep itself nests under the run the user named
            tags[tracking.PARENT_TAG] = config[PARENT_KEY]
        name = (f"sweep {time.strftime('%Y-%m-%d %H:%M')} {' x '.join(keys) or 'one job'} "
                f"({expected if expected is not None else '?'})")
        self.parent_id = tracking.open_parent_run(
            experiment_id, config.get("run_name") or name, tags,
            sweep_params(overrides) | {
                "sweeper": config.hydra.sweeper.get("_target_", "?"),
                "launcher": config.hydra.launcher.get("_target_", "?"),
                "sweep_dir": str(sweep_dir.resolve()),
            })
        self.heartbeat = Heartbeat(self.parent_id).__enter__()
        atexit.register(self._abandon)
        # Every job's config carries the parent's id, the tracking URI and the absolute mlruns_dir
        # (the sweeper reads these overrides after this callback), so jobs nest under the parent
        # whichever launcher runs them, on whatever machine, in whatever working directory.
        pinned[PARENT_KEY] = self.parent_id
        with read_write(config.hydra.overrides):
            config.hydra.overrides.task = overrides + [f"{key}={_quoted(value)}" for key, value in pinned.items()]
        log.info("MLflow sweep run %s (children nest under it)", self.parent_id)

    def __getstate__(self) -> dict:
        """Launchers that pickle Hydra's context (joblib) get the callback without its thread."""
        return self.__dict__ | {"heartbeat": None}

    def _end(self, status: str) -> None:
        from rps import tracking

        if self.heartbeat is not None:
            self.heartbeat.__exit__(None, None, None)
        tracking.end_run(self.parent_id, status)
        self.finished = True

    def _abandon(self) -> None:
        """At exit without a summary (Ctrl-C, a crash): the parent must not stay RUNNING."""
        if self.parent_id and not self.finished:
            self._end("KILLED")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.parent_id:
            return
        try:
            failed = summarize(self.parent_id)
        except Exception as err:
            print(f"rps: error: the sweep's summary could not be written: {err}", file=sys.stderr)
            sys.exit(1)  # the parent run is then marked KILLED at exit
        promoted = _promote(self.parent_id, config)
        self._end("FINISHED")
        if failed:
            print(f"rps: {failed} sweep job(s) failed; see the sweep run's summary.md.", file=sys.stderr)
        if failed or not promoted:
            sys.exit(1)


def _promote(parent_id: str, config: DictConfig) -> bool:
    """champion.enabled: the chosen job's model takes the champion alias if it beats the holder
    (rps.tracking.champion); False when that failed (the sweep then exits non-zero)."""
    from rps import tracking

    try:
        tracking.promote_chosen(parent_id, config)
    except Exception as err:  # the registry refused: the summary stands, the exit code says it
        print(f"rps: error: the sweep's chosen model could not be promoted: {str(err).splitlines()[0][:300]}",
              file=sys.stderr)
        return False
    return True


# --------------------------------------------------------------------------- summary


def summarize(parent_id: str) -> int:
    """Write the sweep summary into the parent run; returns the number of failed or missing jobs.

    The best job is chosen on validation only (:func:`rps.search.summary.choose_best`) and
    recorded first (rps.search.chosen); its test accuracy is logged beside it, reported and
    never compared.
    """
    import mlflow

    from rps import tracking
    from rps.search.chosen import record_choice
    from rps.training import plots

    client = mlflow.MlflowClient()
    for run in tracking.child_runs(parent_id, client):
        if run.info.status == "RUNNING":  # the launcher returned, so its process is gone
            tracking.end_run(run.info.run_id, "KILLED")
    parent = tracking.get_run(parent_id)
    keys = swept_keys(parent)
    children = tracking.child_runs(parent_id, client)
    table = [summary.run_row(run, keys) for run in children]
    failed = [r for r in table if r["status"] != "FINISHED"]
    expected = int(parent.data.tags.get("sweep.expected_jobs", len(table)))
    missing = max(0, expected - len(table))  # jobs that could not even record a FAILED run
    note = (f"\n{missing} of {expected} jobs never reported to the tracking store (a machine that cannot reach "
            "it? their logs, under the sweep directory or the cluster's job logs, say why)\n") if missing else ""
    report = tracking.MlflowReporter(parent_id)
    choice = record_choice(report, parent_id, table, children, parent.info.run_name, f"sweep-{parent_id[:8]}")
    report.text(summary.to_csv(table), "summary/summary.csv")
    report.text(summary.markdown(table) + summary.stats_line(table) + note + choice.markdown(), "summary/summary.md")
    report.figure(plots.sweep_accuracy(table, keys), "summary/accuracy.png")
    report.metrics({"n_children": len(table), "n_failed": len(failed), "n_missing": missing} | summary.sweep_stats(table))
    print(f"\nSweep {parent_id}: {len(table)} jobs, {len(failed)} failed\n"
          f"{summary.markdown(table)}{summary.stats_line(table)}{note}\n{choice.console()}")
    return len(failed) + missing
