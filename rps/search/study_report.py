"""A search study's summary in its MLflow parent run: the trials, the best one (on validation),
and Optuna's own plots (optimization history, parameter importances, parallel coordinates)."""

from __future__ import annotations

import logging
import warnings
from typing import Optional

from rps.search import summary
from rps.search.chosen import Choice, record_choice

from rps import tracking

log = logging.getLogger(__name__)


def _plots(study) -> dict[str, object]:
    """Optuna's matplotlib figures of the study, by artifact name (those it can draw yet)."""
    import optuna
    from optuna.visualization import matplotlib as plot

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # "no complete trials yet" is not news here
    figures = {}
    for name, draw in (("optimization_history", plot.plot_optimization_history),
                       ("param_importances", plot.plot_param_importances),
                       ("parallel_coordinate", plot.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
                warnings.simplefilter("ignore")
                axes = draw(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. importances of < 2 trials
            log.info("No %s plot yet: %s", name, err)
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        if name == "parallel_coordinate":  # one axis per parameter: give them room
            params = {key for trial in study.get_trials(deepcopy=False) for key in trial.params}
            figure.set_size_inches(max(8.0, 1.8 * len(params) + 3), 5)  # (no best trial before one completes)
            figure.tight_layout()
        figures[f"study/{name}.png"] = figure
    return figures


def report_study(study, parent_id: str, keys: list[str], status: Optional[str]) -> Choice:
    """The best trial (recorded first), the table of trials (csv, markdown), counts and plots;
    ``status`` ends the parent. Returns the choice, in words."""
    report = tracking.MlflowReporter(parent_id)
    runs = tracking.child_runs(parent_id)
    table = []
    for run in runs:
        state = run.data.tags.get("trial_state") or {"FINISHED": "COMPLETE", "FAILED": "FAIL"}.get(run.info.status,
                                                                                                  run.info.status)
        table.append({"trial": run.data.tags.get("optuna.trial_number", ""), "state": state}
                     | summary.run_row(run, keys))
    table.sort(key=lambda row: int(row["trial"] or -1))
    choice = record_choice(report, parent_id, table, runs, f"study {study.study_name}", study.study_name)
    best = summary.choose_best(table)
    if best is not None:
        report.tags({"best_trial_number": str(best["trial"])} | {f"best.{key}": str(best[key]) for key in keys})
    report.text(summary.to_csv(table), "summary/summary.csv")
    report.text(summary.markdown(table) + summary.stats_line(table) + choice.markdown(), "summary/summary.md")
    for path, figure in _plots(study).items():
        report.figure(figure, path)
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    report.metrics({f"n_{name.lower()}": states.count(name) for name in ("COMPLETE", "PRUNED", "FAIL")})
    if status:
        tracking.end_run(parent_id, status)
    return choice
