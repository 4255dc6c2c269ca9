"""Where a run's logged model is, and a local copy of it to load: ``runs:/<run id>`` (the model the
run's tag ``rps.model_uri`` names), ``models:/<name>/<version>`` or ``models:/<model id>`` and other
MLflow model URIs (``runs:/<run id>/export/model_int8.tflite`` too) are downloaded from the
tracking store; a local folder or ``.tflite`` file is used as it is."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Optional

from rps.common.errors import ResourceError
from rps.tracking.reporter import MODEL_URI_TAG
from rps.tracking.store import use_store

RUN_URI = re.compile(r"runs:/([0-9a-f]{32})/?")


def model_uri(model: str) -> str:
    """``runs:/<run id>`` (no path): the run's logged model, as its tag rps.model_uri names it."""
    import mlflow

    found = RUN_URI.fullmatch(model)
    if not found:
        return model
    try:
        tags = mlflow.MlflowClient().get_run(found.group(1)).data.tags
    except mlflow.exceptions.MlflowException as err:
        raise ResourceError(f"No run {found.group(1)} in the tracking store ({err.error_code}).") from err
    if MODEL_URI_TAG not in tags:
        raise ResourceError(f"Run {found.group(1)} has no logged model (no {MODEL_URI_TAG} tag); give its model URI.")
    return tags[MODEL_URI_TAG]


def local_model(model: str, tracking_uri: Optional[str] = None, mlruns_dir: str = "mlruns",
                into: Optional[Path] = None) -> Path:
    """A local folder holding ``model``: the folder itself, or the MLflow model the URI names,
    downloaded into ``into`` (a new temporary folder by default)."""
    path = Path(model).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix == ".tflite"):  # a local model, used as it is
        return path.resolve()
    if "://" not in model and ":/" not in model:
        raise ResourceError(f"MODEL {model} is not a folder nor an MLflow model URI (runs:/<id>, models:/<name>/<v>).")
    import mlflow

    use_store(tracking_uri, mlruns_dir)
    uri = model_uri(model)
    target = Path(into or tempfile.mkdtemp(prefix="rps-model-"))
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
    except Exception as err:  # MLflow raises several types for unknown runs/models/paths
        raise ResourceError(f"Could not download the MLflow model {uri}: {str(err).splitlines()[0][:300]}") from err
