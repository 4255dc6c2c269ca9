"""Which config values a run logs as MLflow params: the knobs that shaped its model, as it used them.

MLflow's chart view prints every param of a run under each of its images, and its tables show
every param as a column: params that changed nothing (the fine-tuning knobs of a frozen run, the
momentum of Adam), plumbing (where the store is, the parent's id, what was exported) and unset
values (``null``) pushed the images out of the card and read as settings. They are left out;
the whole composed config stays the artifact ``config/config.yaml``, and a swept key is always
logged, whatever it is.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

# Where the run was stored and what it exported, not how its model was trained (the UI shows the
# parent run and the model; tags.mlflow.parentRunId finds a sweep's children).
PLUMBING = ("experiment_name", "run_name", "tracking_uri", "mlruns_dir", "parent_run_id", "resume", "num_samples",
            "register_model", "export.", "feature_cache.dir", "feature_cache.batch_size", "dataset.data_dir")
# (key, when its value makes these keys irrelevant, the keys)
INERT: tuple[tuple[str, Callable[[Any], bool], tuple[str, ...]], ...] = (
    ("augment.kind", lambda kind: kind == "none", ("augment.",)),
    ("backbone.trainable", lambda trainable: not trainable,
     ("backbone.fine_tune_from", "backbone.fine_tune_epochs", "optimizer.fine_tune_lr", "augment.head_phase")),
    ("optimizer.name", lambda name: name != "sgd", ("optimizer.momentum",)),
    ("early_stopping.enabled", lambda enabled: not enabled,
     ("early_stopping.patience", "early_stopping.restore_best_weights")),
    ("split.group_by", lambda group_by: group_by != "clusters", ("split.groups", "split.group_features")),
    ("split.group_by", lambda group_by: group_by != "pattern", ("split.pattern",)),
    ("feature_cache.enabled", lambda enabled: enabled is False, ("feature_cache.engine",)),
)
COUNTS = ("split.val_size", "split.test_size", "backbone.fine_tune_from")  # fraction below 1, count from 1


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


def left_out(params: dict[str, Any]) -> set[str]:
    """The keys of ``params`` that are plumbing, unset, or made irrelevant by another value."""
    out = {k for k, v in params.items() if v is None or _under(k, PLUMBING)}
    for key, irrelevant, keys in INERT:
        if key in params and irrelevant(params[key]):
            out |= {k for k in params if k != key and _under(k, keys)}
    return out


def as_logged(key: str, value: Any) -> Any:
    """A size of 1 or more is a count: ``12``, not ``12.0``."""
    if key in COUNTS and isinstance(value, float) and value >= 1 and value == int(value):
        return int(value)
    return value


def run_params(params: dict[str, Any], keep: Iterable[str] = ()) -> dict[str, Any]:
    """``params`` (the flattened config as used) without :func:`left_out` keys, except ``keep``."""
    dropped = left_out(params) - set(keep)
    return {k: as_logged(k, v) for k, v in params.items() if k not in dropped}
