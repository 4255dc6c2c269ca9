"""When, and at which step, a training run's metrics are written, so MLflow's UI opens on what the
run is judged by.

MLflow lists a run's metrics in the order they were first logged (the runs table, Compare's
parallel coordinates, the run page), draws a metric whose last step is 0 as a bar and others as
lines, and links a logged model to the run's metric points at the model's step. So:

- each epoch's batch is written at once, the objective as it stands first (the run's first key);
- summary metrics reported before the first epoch wait for its batch (then step 0);
- what is reported after training (the objective's final value, the test metrics) waits for the
  model: it is written once, linked to the model, in the order reported with the objective
  first — a key that also had per-epoch points (the objective) at :attr:`end_step`, after its
  running values, where it is the latest; the others at step 0, as single values;
- diagnostics (:data:`DEFERRED`) come last.
"""

from __future__ import annotations

from rps.training.outcome import OBJECTIVE, OBJECTIVE_LOSS

DEFERRED = ("timing_",)  # diagnostics: logged last
Batch = tuple[dict[str, float], int]  # metrics and the step they are logged at


class MetricOrder:
    """Decides which batches to write now; keeps the rest for :meth:`for_model` and :meth:`rest`."""

    def __init__(self) -> None:
        self.last_epoch = 0
        self.epoch_keys: set[str] = set()
        self.early: dict[str, float] = {}  # reported before the first epoch
        self.final: dict[str, float] = {}  # reported after training, until the model is logged
        self.deferred: dict[str, float] = {}
        self.model_logged = False

    @property
    def end_step(self) -> int:
        """The step after the last epoch (0 before any): the final values' and the model's."""
        return self.last_epoch + 1 if self.epoch_keys else 0

    def epoch(self, values: dict[str, float], step: int) -> list[Batch]:
        first = not self.epoch_keys
        self.last_epoch = step
        self.epoch_keys |= set(values)
        batches = [(values, step)]
        if first and self.early:
            batches.append((self.early, 0))
            self.early = {}
        return batches

    def summary(self, values: dict[str, float]) -> list[Batch]:
        now = {k: v for k, v in values.items() if not k.startswith(DEFERRED)}
        self.deferred.update({k: v for k, v in values.items() if k.startswith(DEFERRED)})
        if not self.epoch_keys:
            self.early.update(now)
            return []
        if not self.model_logged:
            self.final.update(now)
            return []
        return self._at_steps(now)

    def _at_steps(self, values: dict[str, float]) -> list[Batch]:
        """The objective (and its loss) first; per-epoch keys at :attr:`end_step`, the rest at 0."""
        ordered = {k: values[k] for k in (OBJECTIVE, OBJECTIVE_LOSS) if k in values} | values
        late = {k: v for k, v in ordered.items() if k in self.epoch_keys}
        single = {k: v for k, v in ordered.items() if k not in self.epoch_keys}
        return [(batch, step) for batch, step in ((late, self.end_step), (single, 0)) if batch]

    def for_model(self) -> list[Batch]:
        """The final values, now that the model is logged (they are linked to it)."""
        self.model_logged = True
        final, self.final = self.final, {}
        return self._at_steps(final)

    def rest(self) -> list[Batch]:
        """At the run's end: whatever still waits, the diagnostics last."""
        batches = self._at_steps(self.final) + ([(self.early, 0)] if self.early else [])
        batches += [(self.deferred, 0)] if self.deferred else []
        self.final, self.early, self.deferred = {}, {}, {}
        return batches
