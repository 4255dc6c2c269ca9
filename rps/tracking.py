"""Tracking: where runs go, how they start and end, and what is recorded with them.

Default store: ``sqlite:///<launch dir>/mlruns/mlflow.db`` with artifacts under
``mlruns/artifacts/``. ``tracking_uri=...`` or ``$MLFLOW_TRACKING_URI`` (e.g. a team's
tracking server) take precedence. A run that raises ends FAILED, one interrupted by Ctrl-C
or SIGTERM ends KILLED, so no run is ever left RUNNING.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlparse

import mlflow
from mlflow.entities import RunStatus
from omegaconf import DictConfig, OmegaConf

from rps.errors import ResourceError
from rps.filelock import exclusive
from rps.report import Reporter
from rps.sweep import PARENT_TAG  # nests a run under a sweep's parent run in the UI

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "tensorflow", "tf-keras", "tensorflow-hub", "tensorflow-datasets",
    "numpy", "hydra-core", "mlflow", "matplotlib",
)
MODEL_REQUIREMENTS = ("tensorflow", "tf-keras", "tensorflow-hub")


def resolve_tracking_uri(configured: Optional[str], mlruns_dir: str) -> tuple[str, Optional[Path]]:
    """The tracking URI, and the local artifact root when the default sqlite store is used.

    (MLflow sets sqlite's busy timeout to 20 s per session, so concurrent writers queue.)
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, None
    root = Path(mlruns_dir).expanduser().resolve()
    return f"sqlite:///{root / 'mlflow.db'}", root / "artifacts"


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when a tracking server does not answer."""
    if urlparse(uri).scheme not in ("http", "https"):
        return
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout).raise_for_status()
    except requests.RequestException as err:
        raise ResourceError(
            f"The MLflow tracking server {uri} does not answer ({type(err).__name__}). Start it, "
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
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):].split("?")[0])
    db.parent.mkdir(parents=True, exist_ok=True)
    return db.with_name(db.name + ".lock")


def setup_experiment(cfg: DictConfig) -> str:
    """Point MLflow at the store and return the experiment's id (created if needed).

    Fails before any training when the server is down or the local store is not writable. The
    local store's first use (creating its tables) is serialized across processes: MLflow's
    schema migration is not safe to run twice at once.
    """
    uri, artifact_root = resolve_tracking_uri(cfg.tracking_uri, cfg.mlruns_dir)
    check_tracking_server(uri)
    if artifact_root is not None:
        _check_writable(artifact_root)
    mlflow.set_tracking_uri(uri)
    try:
        lock = _store_lock(uri)
        with exclusive(lock) if lock else nullcontext():
            experiment = mlflow.get_experiment_by_name(cfg.experiment_name)
            if experiment is not None and experiment.lifecycle_stage == "deleted":
                raise ResourceError(
                    f"The MLflow experiment '{cfg.experiment_name}' is deleted (in the store's trash). "
                    "Restore it (MLflow UI, or `mlflow experiments restore`), or choose another "
                    "experiment_name=..."
                )
            if experiment is not None:
                return experiment.experiment_id
            try:
                location = artifact_root.as_uri() if artifact_root else None
                return mlflow.create_experiment(cfg.experiment_name, artifact_location=location)
            except mlflow.exceptions.MlflowException:  # created meanwhile by a job on another store client
                return mlflow.get_experiment_by_name(cfg.experiment_name).experiment_id
    except ResourceError:
        raise
    except Exception as err:  # MLflow and SQLAlchemy raise many types for a store they cannot use
        raise ResourceError(
            f"Cannot use the MLflow tracking store {uri}: {str(err).splitlines()[0][:300]}. Fix "
            "MLFLOW_TRACKING_URI / tracking_uri (e.g. sqlite:///<existing folder>/mlflow.db or a "
            "running server's http:// address), or unset both to use the local store under mlruns/."
        ) from err


@contextmanager
def tracked_run(experiment_id: str, run_name: str, tags: dict[str, str]) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run that ends FINISHED, FAILED (exception) or KILLED (Ctrl-C / SIGTERM)."""
    run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags)
    status = RunStatus.FAILED
    try:
        yield run
        status = RunStatus.FINISHED
    except KeyboardInterrupt:
        status = RunStatus.KILLED
        raise
    except Exception as err:
        mlflow.set_tag("error", f"{type(err).__name__}: {err}"[:4000])
        raise
    finally:
        mlflow.end_run(RunStatus.to_string(status))


def record_failed_run(cfg: DictConfig, name: str, parent_run_id: str, err: Exception) -> None:
    """A FAILED run for a sweep job that could not start (bad value, missing resource)."""
    try:
        experiment_id = setup_experiment(cfg)
    except Exception:  # the store itself is unreachable: nothing can be recorded
        return
    client = mlflow.MlflowClient()
    tags = environment_tags() | {PARENT_TAG: parent_run_id, "error": str(err)[:4000]}
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in config_params(cfg).items()])
    client.set_terminated(run.info.run_id, "FAILED")


# --------------------------------------------------------------------------- what a run records


@contextmanager
def writing_artifacts(what: str) -> Iterator[None]:
    """Turn a failure to write artifacts (disk full, unwritable store) into a clear error."""
    try:
        yield
    except OSError as err:
        uri = mlflow.active_run().info.artifact_uri if mlflow.active_run() else "the artifact store"
        raise ResourceError(
            f"Could not write {what} to {uri}: {err}. Free disk space or fix that location "
            "(mlruns_dir, or the experiment's artifact location); this run is marked FAILED."
        ) from err


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b": value}``."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_params(cfg: DictConfig) -> dict[str, Any]:
    return flatten(OmegaConf.to_container(cfg, resolve=True))


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_tags() -> dict[str, str]:
    """Git commit (when the code is a git checkout), Python and package versions."""
    tags = {f"version.{name}": package_version(name) for name in PACKAGES}
    tags["version.python"] = platform.python_version()
    tags["command"] = " ".join([os.path.basename(sys.executable), *sys.argv])
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["git_commit"] = commit
        tags["git_dirty"] = str(bool(_git("status", "--porcelain", "--untracked-files=no")))
    return tags


def log_config(cfg: DictConfig, hydra_dir: Optional[Path]) -> None:
    """The flattened resolved config as params; the YAML (and Hydra's record) as artifacts."""
    mlflow.log_params(config_params(cfg))
    mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/config.yaml")
    if hydra_dir is not None and hydra_dir.is_dir():
        mlflow.log_artifacts(str(hydra_dir), "config/hydra")


class MlflowReporter(Reporter):
    """Writes each param, tag and metric to the active MLflow run as soon as it is reported."""

    def params(self, values: dict[str, Any]) -> None:
        super().params(values)
        mlflow.log_params(values)

    def tags(self, values: dict[str, str]) -> None:
        super().tags(values)
        mlflow.set_tags(values)

    def metrics(self, values: dict[str, float]) -> None:
        super().metrics(values)
        mlflow.log_metrics(values)

    def epoch(self, values: dict[str, float], step: int) -> None:
        super().epoch(values, step)
        mlflow.log_metrics(values, step=step)


def log_figure(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    mlflow.log_figure(fig, path)
    plt.close(fig)


def _requirements() -> list[str]:
    return [f"{name}=={package_version(name)}" for name in MODEL_REQUIREMENTS]


def log_classifier(model, class_names: list[str], image_size: int, saved_dir: Path,
                   register_as: Optional[str] = None) -> None:
    """The trained image -> probabilities model, as an MLflow model and as a raw SavedModel.

    ``mlflow.pyfunc.load_model("runs:/<id>/model")`` reloads it and ``predict`` returns class
    probabilities; ``saved_model/`` is the same model as a plain SavedModel directory (also
    written to ``saved_dir``) with ``rps_model.json`` (class names, input size) beside it. Both
    are self-contained. ``register_as`` also registers the MLflow model under that name.
    """
    import mlflow.tensorflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from rps.model import ExportedClassifier

    info = {
        "class_names": list(class_names),
        "image_size": image_size,
        "input": f"float32 RGB in [0, 1], shape [batch, {image_size}, {image_size}, 3]",
        "output": "float32 class probabilities, shape [batch, n_classes], in class_names order",
    }
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, image_size, image_size, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(class_names)), "probabilities")]),
    )
    exported = ExportedClassifier(model, class_names, image_size)
    mlflow.tensorflow.log_model(
        exported,
        name="model",
        signature=signature,
        metadata=info,
        saved_model_kwargs={"signatures": {"serving_default": exported.__call__}},
        pip_requirements=_requirements(),  # stated, so MLflow does not reload the model to infer them
        registered_model_name=register_as,
    )
    exported.save(str(saved_dir))
    (saved_dir / "rps_model.json").write_text(json.dumps(info, indent=2))
    mlflow.log_artifacts(str(saved_dir), "saved_model")
