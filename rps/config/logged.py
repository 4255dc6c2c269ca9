"""A run's config as it logged it (``config/config.yaml``), back into the checked schema, so the
same run can be composed again without Hydra (``rps.reproduce``)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rps.common.errors import ConfigError
from rps.config.schema import GROUP_SCHEMAS, Config

GROUPS = ("split", "backbone", "head", "optimizer", "augment")


def _migrate(loaded: DictConfig) -> None:
    """Knobs that were replaced since the run was logged, as their replacements (in place)."""
    export = loaded.get("export") or {}
    formats = list(export.get("formats") or [])
    if export.get("tflite"):
        formats.append("float32")
    if export.get("tflite") and export.get("tflite_quantize"):
        formats.append("dynamic_range")
    for old in ("tflite", "tflite_quantize"):
        if old in export:
            export[old] = None
    if "export" in loaded:
        loaded.export.formats = formats


def typed_config(loaded: DictConfig) -> DictConfig:
    """Plain config values (a logged config, a checkpoint's) in this version's typed schema: the
    dataset's schema chosen by its ``kind``, every other group's by its name."""
    cfg = OmegaConf.structured(Config)
    cfg.dataset = OmegaConf.structured(GROUP_SCHEMAS[f"dataset_{loaded.dataset.kind}"])
    for group in GROUPS:
        cfg[group] = OmegaConf.structured(GROUP_SCHEMAS[group])
    return OmegaConf.merge(cfg, loaded)


def logged_config(text: str) -> DictConfig:
    """The run's config from its logged YAML, typed and checked by the schema of this rps version.

    Raises :class:`ConfigError` when it does not fit (a run logged by a different rps version).
    """
    try:
        loaded = OmegaConf.create(text)
        _migrate(loaded)
        return typed_config(loaded)
    except (OmegaConfBaseException, KeyError, AttributeError, ValueError) as err:
        raise ConfigError(
            f"The run's logged config does not fit this version of rps ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:300] if str(err) else ''}). Check out the run's git_commit "
            "(and install its environment/requirements.lock) to rerun it."
        ) from err
