"""The ``search`` config group: an Optuna study's settings and search space, composed only by
``python -m rps.tune`` (its primary config ``conf/tune.yaml`` = the run's config + this group), so
plain runs neither carry nor log them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from rps.config.schema import FORMATS, Check, Config
from rps.training.outcome import OBJECTIVE

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
SPACE_FIELDS = {"key", "type", "low", "high", "log", "step", "choices"}
MINIMIZED = ("latency_ms", "size_bytes")  # what a study may trade the validation objective against


@dataclass
class SearchConfig:
    """A hyper-parameter search with Optuna (``python -m rps.tune``).

    ``space`` names what to sample: ``lr: {key: optimizer.lr, type: float, low: 1e-4, high: 0.1,
    log: true}``, ``width: {key: head.hidden_units, type: int, low: 0, high: 256, step: 64}`` or
    ``optimizer: {type: categorical, choices: [adam, sgd]}`` (``key``: the config key or group to
    set, by default the entry's name; entries are overridable: ``search.space.lr.high=0.01``).
    The first objective is always the run's validation objective (rps.training.outcome.OBJECTIVE),
    optionally against a format's latency or size (``objectives``); single-objective trials are
    pruned on per-epoch validation accuracy.
    """

    study: Optional[str] = None  # the study's name (null: experiment_name)
    trials: int = 20  # trials of the whole study, across all its workers
    sampler: str = "tpe"  # tpe | random
    seed: Optional[int] = 0  # the sampler's seed; each trial draws from (seed, its number) (null: unseeded)
    pruner: str = "median"  # median | hyperband | none
    startup_trials: int = 5  # median: trials that finish before any is pruned
    warmup_epochs: int = 2  # median: epochs a trial runs before it can be pruned
    storage: Optional[str] = None  # null: sqlite:///<mlruns_dir>/optuna.db; a database URL for many workers
    space: dict[str, Any] = field(default_factory=dict)
    # What the study optimises: the validation objective alone (maximized), or it against the
    # latency (ms, batch 1) or size (bytes) of a TFLite format, minimized: e.g.
    # [selection_val_accuracy, export/int8/latency_ms]. Each trial then exports that format and
    # measures it; the parent run plots the Pareto front. Several objectives: search.pruner=none.
    objectives: list[str] = field(default_factory=lambda: [OBJECTIVE])


@dataclass
class TuneConfig(Config):
    """What ``python -m rps.tune`` composes: a run's config plus the study's ``search`` block."""

    search: SearchConfig = field(default_factory=SearchConfig)


def _space_problem(spec: Any) -> Optional[str]:
    """What is wrong with one search-space entry, or None."""
    kinds = "{[key,] type: float|int, low, high[, log, step]} or {[key,] type: categorical, choices: [...]}"
    if not isinstance(spec, DictConfig) or spec.get("type") not in ("float", "int", "categorical"):
        return kinds
    if set(spec) - SPACE_FIELDS:
        return f"unknown fields {sorted(set(spec) - SPACE_FIELDS)}; {kinds}"
    if spec.type == "categorical":
        return None if spec.get("choices") else "a categorical needs a non-empty choices list"
    low, high = spec.get("low"), spec.get("high")
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or not low < high:
        return f"{spec.type} needs numbers low < high"
    if spec.get("log") and low <= 0:
        return "log: true needs low > 0"
    return None


def objective_format(objective: str) -> Optional[str]:
    """The TFLite format a latency or size objective measures (``export/int8/latency_ms`` -> int8)."""
    parts = objective.split("/")
    if len(parts) == 3 and parts[0] == "export" and parts[1] in FORMATS and parts[2] in MINIMIZED:
        return parts[1]
    return None


def directions(objectives: list[str]) -> list[str]:
    """Optuna's direction of each objective: the validation objective up, latency and size down."""
    return ["maximize" if objective == OBJECTIVE else "minimize" for objective in objectives]


def search_checks(cfg: DictConfig) -> list[Check]:
    se = cfg.search
    checks = [
        ("search.trials", se.trials >= 1, "an integer >= 1"),
        ("search.sampler", se.sampler in SAMPLERS, f"one of {', '.join(SAMPLERS)}"),
        ("search.pruner", se.pruner in PRUNERS, f"one of {', '.join(PRUNERS)}"),
        ("search.startup_trials", se.startup_trials >= 0, "an integer >= 0"),
        ("search.warmup_epochs", se.warmup_epochs >= 0, "an integer >= 0"),
    ]
    extra = [o for o in se.objectives[1:] if objective_format(o) is None]
    checks += [
        ("search.objectives", bool(se.objectives) and se.objectives[0] == OBJECTIVE and not extra
         and len(set(se.objectives)) == len(se.objectives),
         f"[{OBJECTIVE}], optionally followed by export/<format>/latency_ms or export/<format>/size_bytes "
         f"(format one of {', '.join(FORMATS)})"),
        ("search.pruner", len(se.objectives) == 1 or se.pruner == "none",
         "none when the study has several objectives (Optuna prunes single-objective studies only)"),
        ("split.refit", not cfg.split.refit,
         "false: a study chooses on validation, which a refit does not have (refit its choice afterwards: "
         "python -m rps.refit <study's parent run id>)"),
    ]
    for key, spec in se.space.items():
        problem = _space_problem(spec)
        checks.append((f"search.space.{key}", problem is None, problem or ""))
    return checks


def register_tune_configs() -> None:
    """The schemas ``conf/tune.yaml`` and ``conf/search/*.yaml`` extend (after the run's own)."""
    from rps.config import register_configs

    register_configs()
    cs = ConfigStore.instance()
    cs.store(name="tune_schema", node=TuneConfig)
    cs.store(group="schema", name="search", node=SearchConfig)
