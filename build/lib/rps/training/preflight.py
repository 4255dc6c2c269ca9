"""Pre-flight: what can be checked before a run starts, in pure Python (seconds, no TensorFlow),
so a missing mirror, a split that does not fit or an unreachable backbone fail before any
tracking run exists."""

from __future__ import annotations

from omegaconf import DictConfig

from rps.data.sources import DatasetSource, locate_dataset
from rps.data.splits import split_sizes
from rps.model.hub import check_backbone


def preflight(cfg: DictConfig) -> DatasetSource:
    """Check the dataset, the split's fit and the backbone of a validated config, in pure Python
    (seconds, no TensorFlow). Raises an :class:`~rps.common.errors.RpsError` naming the fix."""
    source = locate_dataset(cfg.dataset)
    if source.n_train is not None:  # unknown only for a dataset still to be downloaded
        split_sizes(cfg.split, source.n_train, source.n_test)
    check_backbone(cfg.backbone.handle)
    return source
