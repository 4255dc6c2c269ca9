"""A multi-objective study's Pareto front in its parent run: the trials no other trial beats on
every objective (validation objective up, a format's latency or size down), as a plot
(``study/pareto_front.png``, every trial drawn, the front highlighted) and a table
(``study/pareto_front.md`` and ``.csv``) naming each front trial's run."""

from __future__ import annotations

import logging
import warnings

from rps.search import summary

log = logging.getLogger(__name__)


def front_rows(study, objectives: list[str]) -> list[dict]:
    """The Pareto-optimal trials, by their first objective (best first): number, run and values."""
    rows = [{"trial": t.number, **dict(zip(objectives, t.values)), "run_id": t.user_attrs.get("run_id", "")}
            for t in study.best_trials]
    return sorted(rows, key=lambda row: -row[objectives[0]])


def report_pareto(study, parent_id: str, objectives: list[str]) -> None:
    """The front's plot and table, written into the study's parent run (once a trial completed)."""
    import optuna
    from optuna.visualization import matplotlib as plot

    from rps import tracking

    if not any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
        return
    report = tracking.MlflowReporter(parent_id)
    rows = front_rows(study, objectives)
    report.text(summary.markdown(rows), "study/pareto_front.md")
    report.text(summary.to_csv(rows), "study/pareto_front.csv")
    if len(objectives) > 3:  # Optuna draws two or three objectives
        return
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
        warnings.simplefilter("ignore")
        axes = plot.plot_pareto_front(study, target_names=objectives)
    report.figure(axes.figure, "study/pareto_front.png")
