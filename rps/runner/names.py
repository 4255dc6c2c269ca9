"""How runs are named: a single run after its main hyper-parameters, a sweep's or study's child
after the values it was given (the keys its parent run lists in the tag ``sweep.keys``)."""

from __future__ import annotations

from omegaconf import DictConfig

PARENT_KEY = "parent_run_id"  # the config key that nests a job under its sweep's parent run


def default_run_name(cfg: DictConfig) -> str:
    return (
        f"{cfg.backbone.name} {cfg.split.kind} dropout={cfg.head.dropout} "
        f"{cfg.optimizer.name} lr={cfg.optimizer.lr}"
    )


def child_run_name(job_overrides: list[str], keys: list[str]) -> str:
    """``["head.dropout=0.2", "optimizer.lr=0.001", "epochs=1"]`` -> ``"dropout=0.2 lr=0.001"``
    (only the swept keys, when known)."""
    parts = []
    for item in job_overrides:
        key, _, value = item.partition("=")
        key = key.lstrip("+~")
        if key != PARENT_KEY and (key in keys or not keys):
            parts.append(f"{key.split('.')[-1]}={value}")
    return " ".join(parts) or "default"


def swept_keys(parent) -> list[str]:
    return [k for k in parent.data.tags.get("sweep.keys", "").split(",") if k]
