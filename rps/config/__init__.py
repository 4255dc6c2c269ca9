"""The run's configuration: structured schemas (``schema.py``) registered with Hydra, and
:func:`validate`, the one check of a composed config before anything heavy is imported.

Hydra composes ``conf/config.yaml`` from the groups ``dataset``, ``split``, ``backbone``,
``head``, ``optimizer`` and ``augment``; each group's YAML files extend the schema registered
here, so OmegaConf rejects unknown keys and wrong types, and :func:`validate` rejects values out
of range (and combinations the feature cache cannot serve, a rule rps.model.features states).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterable

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from rps.common.errors import ConfigError
from rps.config.schema import DEFAULT_HANDLE, GROUP_CHECKS, GROUP_SCHEMAS, Check, Config, size_problem

__all__ = ["CONF_DIR", "DEFAULT_HANDLE", "Check", "Config", "compose", "register_configs", "size_problem", "validate"]

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # the repository's conf/: the YAML files


def register_configs() -> None:
    """Register the schemas the YAML files in ``conf/`` extend (``defaults: [/schema/<group>@_here_]``).

    They live in their own ``schema`` group, so Hydra's "Available options" of a group lists only
    the real options.
    """
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for name, node in GROUP_SCHEMAS.items():
        cs.store(group="schema", name=name, node=node)


def compose(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
    """The config ``python -m rps.run <overrides>`` runs with, composed from :data:`CONF_DIR` by Hydra
    outside a Hydra app (benchmarks, tests, a rerun's default config)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def _unknown_keys(node: DictConfig, prefix: str = "") -> list[tuple[str, Any, str]]:
    """Keys the schema does not know: Hydra's ``+key=value`` appends them even to a closed schema,
    so a typo such as ``+head.dropuot=0.2`` would otherwise be silently ignored."""
    schema = OmegaConf.get_type(node)
    known = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    out = []
    for key in node.keys():
        path = f"{prefix}{key}"
        if path == "hydra":  # Hydra's own config, present in a callback's view of the config
            continue
        if known is not None and key not in known:
            out.append((path, node[key], f"no such key; {prefix.rstrip('.') or 'the top level'} has "
                                         f"{', '.join(sorted(known))}"))
        elif isinstance(node._get_node(key), DictConfig):
            out += _unknown_keys(node[key], f"{path}.")
    return out


def problems(cfg: DictConfig, extra: Iterable[Callable[[DictConfig], list[Check]]] = ()) -> list[tuple[str, Any, str]]:
    """Every (key, value, what is allowed) that is wrong in ``cfg``."""
    from rps.model.features import cache_checks

    out = _unknown_keys(cfg)
    for checks in (*GROUP_CHECKS, cache_checks, *extra):
        out += [(key, OmegaConf.select(cfg, key), allowed) for key, ok, allowed in checks(cfg) if not ok]
    return out


def validate(cfg: DictConfig, extra: Iterable[Callable[[DictConfig], list[Check]]] = ()) -> None:
    """Raise :class:`ConfigError` naming every out-of-range value in ``cfg`` (``extra``: the checks
    of groups only some commands compose, e.g. rps.tune's ``search``)."""
    found = problems(cfg, extra)
    if found:
        lines = "; ".join(f"{key}={value!r} (allowed: {allowed})" for key, value, allowed in found)
        raise ConfigError(
            f"Invalid configuration: {lines}. Change the value on the command line "
            "(for example `python -m rps.run head.dropout=0.5`) or in the YAML under conf/."
        )
