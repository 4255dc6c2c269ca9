"""The ``search`` config group: an Optuna study's settings and search space, composed only by
``python -m rps.tune`` (its primary config ``conf/tune.yaml`` = the run's config + this group), so
plain runs neither carry nor log them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from rps.config.schema import Check, Config

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
SPACE_FIELDS = {"key", "type", "low", "high", "log", "step", "choices"}


@dataclass
class SearchConfig:
    """A hyper-parameter search with Optuna (``python -m rps.tune``).

    ``space`` names what to sample: ``lr: {key: optimizer.lr, type: float, low: 1e-4, high: 0.1,
    log: true}``, ``width: {key: head.hidden_units, type: int, low: 0, high: 256, step: 64}`` or
    ``optimizer: {type: categorical, choices: [adam, sgd]}`` (``key``: the config key or group to
    set, by default the entry's name; entries are overridable: ``search.space.lr.high=0.01``).
    The objective is always the run's validation objective (rps.training.outcome.OBJECTIVE);
    trials are pruned on per-epoch validation accuracy.
    """

    study: Optional[str] = None  # the study's name (null: experiment_name)
    trials: int = 20  # trials of the whole study, across all its workers
    sampler: str = "tpe"  # tpe | random
    seed: Optional[int] = 0  # the sampler's seed (null: unseeded)
    pruner: str = "median"  # median | hyperband | none
    startup_trials: int = 5  # median: trials that finish before any is pruned
    warmup_epochs: int = 2  # median: epochs a trial runs before it can be pruned
    storage: Optional[str] = None  # null: sqlite:///<mlruns_dir>/optuna.db; a database URL for many workers
    space: dict[str, Any] = field(default_factory=dict)


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


def search_checks(cfg: DictConfig) -> list[Check]:
    se = cfg.search
    checks = [
        ("search.trials", se.trials >= 1, "an integer >= 1"),
        ("search.sampler", se.sampler in SAMPLERS, f"one of {', '.join(SAMPLERS)}"),
        ("search.pruner", se.pruner in PRUNERS, f"one of {', '.join(PRUNERS)}"),
        ("search.startup_trials", se.startup_trials >= 0, "an integer >= 0"),
        ("search.warmup_epochs", se.warmup_epochs >= 0, "an integer >= 0"),
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
