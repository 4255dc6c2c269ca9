"""Where runs go: the tracking store, checked before any training, and its experiment.

Default store: ``sqlite:///<launch dir>/mlruns/mlflow.db`` with artifacts under
``mlruns/artifacts/``. ``tracking_uri=...`` or ``$MLFLOW_TRACKING_URI`` (e.g. a team's
tracking server) take precedence.
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import mlflow
from omegaconf import DictConfig

from rps.common.errors import ConfigError, ResourceError
from rps.common.files import exclusive
from rps.tracking.access import access_error
from rps.tracking.record import redact
from rps.tracking.runs import reap_stale_runs

log = logging.getLogger(__name__)


def resolve_tracking_uri(configured: Optional[str], mlruns_dir: str) -> tuple[str, Optional[Path]]:
    """The tracking URI, and the artifact root of new experiments when the store is a local
    sqlite file: ``artifacts/`` beside it (MLflow's own default would be ``./mlruns`` of
    whatever directory the command runs in).

    (MLflow sets sqlite's busy timeout to 20 s per session, so concurrent writers queue.)
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and redact(uri) != uri:
        raise ConfigError(
            f"The tracking URI {redact(uri)} carries credentials, which would be printed and logged "
            "with every run. Give the server's address without them (http://host:port) and put them "
            "in MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD."
        )
    if not uri:
        uri = f"sqlite:///{Path(mlruns_dir).expanduser().resolve() / 'mlflow.db'}"
    db = _sqlite_file(uri)
    return uri, (db.parent / "artifacts" if db else None)


def _sqlite_file(uri: str) -> Optional[Path]:
    return Path(uri[len("sqlite:///"):].split("?")[0]) if uri.startswith("sqlite:///") else None


def use_store(configured: Optional[str], mlruns_dir: str = "mlruns") -> str:
    """Point MLflow's client at the store (as :func:`resolve_tracking_uri` chooses); returns its URI."""
    uri, _ = resolve_tracking_uri(configured, mlruns_dir)
    mlflow.set_tracking_uri(uri)
    return uri


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when a tracking server does not answer."""
    if urlparse(uri).scheme not in ("http", "https"):
        return
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout).raise_for_status()
    except requests.RequestException as err:
        raise ResourceError(
            f"The MLflow tracking server {redact(uri)} does not answer ({type(err).__name__}). Start it, "
            "fix MLFLOW_TRACKING_URI / tracking_uri, or unset both to use the local store under mlruns/."
        ) from err


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ResourceError(
            f"The MLflow artifact folder {folder} is not writable ({err.strerror or err}). Free disk "
            "space or fix its permissions, or point mlruns_dir / MLFLOW_TRACKING_URI elsewhere."
        ) from err


def _store_lock(uri: str) -> Optional[Path]:
    """The lock file that serializes a sqlite store's first use (None for other stores)."""
    db = _sqlite_file(uri)
    if db is None:
        return None
    db.parent.mkdir(parents=True, exist_ok=True)
    return db.with_name(db.name + ".lock")


def setup_experiment(cfg: DictConfig) -> str:
    """Point MLflow at the store and return the experiment's id (created if needed).

    Fails before any training when the server is down or the local store is not writable. The
    local store's first use (creating its tables) is serialized across processes: MLflow's
    schema migration is not safe to run twice at once. Runs of the experiment left RUNNING by
    processes that died are marked FAILED on the way (``runs.reap_stale_runs``).
    """
    uri, artifact_root = resolve_tracking_uri(cfg.tracking_uri, cfg.mlruns_dir)
    check_tracking_server(uri)
    mlflow.set_tracking_uri(uri)
    try:
        lock = _store_lock(uri)
        with exclusive(lock) if lock else nullcontext():
            db = _sqlite_file(uri)
            if db is not None and not db.exists():  # (MLflow's own lines about it are kept quiet)
                log.info("New tracking store %s: creating its tables (first use only)", db)
            experiment_id = _experiment_id(cfg.experiment_name, artifact_root)
        reap_stale_runs([experiment_id])
    except ResourceError:
        raise
    except Exception as err:  # MLflow and SQLAlchemy raise many types for a store they cannot use
        denied = access_error(err, uri, cfg.experiment_name)
        if denied:
            raise denied from None
        raise ResourceError(
            f"Cannot use the MLflow tracking store {redact(uri)}: {str(err).splitlines()[0][:300]}. Fix "
            "MLFLOW_TRACKING_URI / tracking_uri (e.g. sqlite:///<existing folder>/mlflow.db or a "
            "running server's http:// address), or unset both to use the local store under mlruns/."
        ) from err
    if artifact_root is not None:
        _check_writable(artifact_root)
    return experiment_id


def _experiment_id(name: str, artifact_root: Optional[Path]) -> str:
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise ResourceError(
            f"The MLflow experiment '{name}' is deleted (in the store's trash). Restore it (MLflow "
            "UI, or `mlflow experiments restore`), or choose another experiment_name=..."
        )
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_root.as_uri() if artifact_root else None)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a job on another store client
        return mlflow.get_experiment_by_name(name).experiment_id


TRAINING_VIEW = "workflowType=machine_learning"  # the UI's "Model training" view (a fresh browser opens on GenAI)


def ui_link(experiment_id: str, run_id: Optional[str] = None) -> str:
    """The run's (or experiment's) page in the tracking server's UI, in its Model training view;
    "" for a local store (no server: `mlflow ui` serves it, docs/tracking.md)."""
    uri = mlflow.get_tracking_uri()
    if urlparse(uri).scheme not in ("http", "https"):
        return ""
    page = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "/runs")
    return f"{redact(uri).rstrip('/')}/{page}?{TRAINING_VIEW}"

