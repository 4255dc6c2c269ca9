"""Where a run's results go as soon as they are known (no dependencies: TF- and MLflow-free)."""

from __future__ import annotations

from typing import Any


class Reporter:
    """Receives what a run produces; this base class keeps it in memory.

    ``rps.tracking.MlflowReporter`` also writes each piece to MLflow the moment it arrives, so a
    run that crashes keeps everything reported before the crash.
    """

    def __init__(self):
        self.recorded: dict[str, dict] = {"params": {}, "tags": {}, "metrics": {}}
        self.epochs: list[tuple[int, dict[str, float]]] = []

    def params(self, values: dict[str, Any]) -> None:
        self.recorded["params"].update(values)

    def tags(self, values: dict[str, str]) -> None:
        self.recorded["tags"].update(values)

    def metrics(self, values: dict[str, float]) -> None:
        self.recorded["metrics"].update(values)

    def epoch(self, values: dict[str, float], step: int) -> None:
        self.epochs.append((step, values))
