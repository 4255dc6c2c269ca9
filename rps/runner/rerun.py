"""The command that reruns a run on its own: ``python -m rps.run`` with what its config changed.

A sweep's child or a search's trial was composed from its command's overrides, an experiment and
the values it was given; rerunning it alone is ``python -m rps.run`` with every value that differs
from the default config (a trial's experiment cannot be named: it declares a ``search`` block
plain runs do not take). The sweep's own plumbing (``parent_run_id``, the pinned store) is left
out, and a run that logged no model (search trials) is rerun with ``export.model=true``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rps.runner.names import PARENT_KEY
from rps.tracking.record import flatten

RERUN_TAG = "rps.rerun"  # every run's tag: the command that trains it again, alone, with its model
_PLAIN = re.compile(r"^[\w./:@+-]+$")  # values Hydra's override grammar takes unquoted


def override_value(value: Any) -> str:
    """A value as a Hydra override spells it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))  # 12, not 12.0 (Hydra reads it back as the field's type)
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in ("null", "true", "false"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def default_config() -> DictConfig:
    """``python -m rps.run``'s config with no override (composed by Hydra, in or outside an app)."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    from rps.config import compose as compose_outside_an_app

    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config")
    return compose_outside_an_app()


def _plumbing(key: str, value: Any, cfg: DictConfig) -> bool:
    """The sweep's pinned store and parent: the same wherever the rerun is started from."""
    if key == PARENT_KEY:
        return True
    local_store = f"sqlite:///{Path(cfg.mlruns_dir).expanduser().resolve() / 'mlflow.db'}"
    if key == "tracking_uri":
        return value == local_store
    if key == "mlruns_dir":
        return Path(str(value)).expanduser().resolve() == Path("mlruns").resolve()
    return False


def rerun_overrides(cfg: DictConfig, default: DictConfig) -> list[str]:
    """``key=value`` for every value of ``cfg`` that differs from ``default`` (its dataset option
    first when the dataset kind differs)."""
    mine = flatten(OmegaConf.to_container(cfg, resolve=True))
    base = flatten(OmegaConf.to_container(default, resolve=True))
    out = []
    if mine.get("dataset.kind") != base.get("dataset.kind"):
        out.append(f"dataset={mine['dataset.kind']}")
        base = {k: v for k, v in base.items() if not k.startswith("dataset.")}
    for key, value in mine.items():
        if key == "dataset.kind" or (key in base and base[key] == value) or _plumbing(key, value, cfg):
            continue
        out.append(f"{key}={override_value(value)}")
    if not cfg.export.model:
        out = [o for o in out if not o.startswith("export.model=")] + ["export.model=true"]
    return out


def rerun_command(cfg: DictConfig) -> str:
    """``python -m rps.run <overrides>`` that trains ``cfg`` again as a single run, with its model."""
    return " ".join(["python -m rps.run", *rerun_overrides(cfg, default_config())])
