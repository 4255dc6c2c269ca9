"""Tracking: where runs go (store.py), how they start and end (runs.py), what they record
(record.py) and how it is written (reporter.py).

Every MLflow write of rps is in this package: a run's content goes through
:class:`MlflowReporter`; run lifecycles (start, end, heartbeats, reaping dead runs) through
``runs.py``.
"""

from rps.tracking.champion import card_registered_versions, promote, promote_chosen
from rps.tracking.provenance import log_provenance
from rps.tracking.record import (
    EPOCHS_ASKED, config_params, environment_tags, epoch_tags, epochs_asked, log_config, redact,
)
from rps.tracking.reporter import MlflowReporter
from rps.tracking.runs import (
    PARENT_TAG, RUN_COLOR, child_color, child_runs, end_run, get_run, logged_epochs, open_parent_run, phase_epochs, reap_stale_runs,
    record_failed_run, shared_parent_run, tracked_run, tagged_runs,
)
from rps.tracking.store import resolve_tracking_uri, setup_experiment, use_store

__all__ = [
    "card_registered_versions", "promote", "promote_chosen", "log_provenance",
    "MlflowReporter", "EPOCHS_ASKED", "config_params", "environment_tags", "epoch_tags", "epochs_asked", "log_config",
    "redact",
    "PARENT_TAG", "RUN_COLOR", "child_color", "child_runs", "end_run", "get_run", "logged_epochs", "open_parent_run",
    "phase_epochs",
    "reap_stale_runs", "record_failed_run", "shared_parent_run", "tracked_run", "tagged_runs",
    "resolve_tracking_uri", "setup_experiment", "use_store",
]
