"""What a sweep's or a study's parent run records about its choice, before anything else it logs:
the chosen child's objective (first, so MLflow lists it first), the chosen child marked (run,
logged model, registry alias), the comparison sheet and per-class table of its children, and the
choice in words for ``summary.md`` and the console."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from rps.runner.rerun import RERUN_TAG
from rps.search import sheet, summary
from rps.tracking.choice import mark_chosen
from rps.tracking.reporter import MODEL_URI_TAG
from rps.training.outcome import OBJECTIVE


@dataclass
class Choice:
    """The choice in words (empty when no child finished) and every finished child's per-class accuracy."""

    lines: list[str] = field(default_factory=list)
    per_class: list[dict[str, Any]] = field(default_factory=list)

    def markdown(self) -> str:
        if not self.lines:
            return ("\n## The choice\n\nNo child finished with a validation objective (none finished, or they are "
                    "refits, split.refit=true, which have no validation): nothing was chosen.\n")
        text = "\n## The choice\n\n" + "".join(f"- {line}\n" for line in self.lines)
        if self.per_class:
            text += ("\n## Per-class test accuracy (reported only; best first by the choice's rule)\n\n"
                     + summary.markdown(self.per_class))
        return text

    def console(self) -> str:
        return "".join(f"{line}\n" for line in self.lines)


def _model(run, registered: Optional[str]) -> Optional[str]:
    """Where the chosen run's model is, and how to use it."""
    if registered:
        return f"models:/{registered} (python -m rps.predict models:/{registered} <images>)"
    if run.data.tags.get(MODEL_URI_TAG):
        return f"runs:/{run.info.run_id} (python -m rps.predict runs:/{run.info.run_id} <images>)"
    return None


def record_choice(report, parent_id: str, table: list[dict[str, Any]], children: list, title: str,
                  sweep: str) -> Choice:
    """Choose among ``table`` (rows of ``children``), log the choice through ``report`` (the
    parent's), mark the chosen child, draw the comparison; returns the choice in words."""
    best = summary.choose_best(table)
    if best is None:
        return Choice()
    report.metrics({k: v for k, v in {OBJECTIVE: best[OBJECTIVE], "chosen_test_accuracy": best["test_accuracy"]}.items()
                    if v is not None})
    report.tags({"best_run_id": best["run_id"], "best_run_name": best["run_name"], "best_chosen_by": summary.CHOSEN_BY})
    run = next(c for c in children if c.info.run_id == best["run_id"])
    registered = mark_chosen(parent_id, children, best["run_id"], sweep)
    figure, per_class = sheet.compare_children(table, best["run_id"], title)
    if figure is not None:  # also an image, so the chart view shows it on the parent
        report.figure(figure, "summary/comparison.png", compare_as="sweep_comparison")
    if per_class:
        report.text(summary.to_csv(per_class), "summary/per_class_accuracy.csv")
    return Choice(summary.choice_lines(table, best, run.data.tags.get(RERUN_TAG), _model(run, registered)), per_class)
