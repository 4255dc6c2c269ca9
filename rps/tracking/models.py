"""A verified local copy of a logged model, to load or serve.

``runs:/<run id>`` (the model the run's tag ``rps.model_uri`` names), ``models:/<name>/<version>``
(or ``@<alias>``), ``models:/<model id>`` and ``runs:/<run id>/<name>`` are downloaded from the
tracking store, then checked against the SHA-256 manifest digest their run recorded (tag
``rps.model_manifest_sha256``, rps.inference.manifest) before anything in them is loaded: a
registered version must also be the very model its run's ``rps.model_uri`` names. A local folder
is the user's own: it is checked against the manifest it carries, if any, and used as it is.
A TFLite file a run exported (``runs:/<run id>/export/model_<format>.tflite``) is checked
against the SHA-256 its run recorded for it (tag ``rps.export.<format>.sha256``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rps.common.errors import IntegrityError, ResourceError
from rps.inference.manifest import MANIFEST_FILE, verify
from rps.tracking.reporter import MANIFEST_TAG, MODEL_URI_TAG
from rps.tracking.store import use_store

log = logging.getLogger(__name__)
RUN_URI = re.compile(r"runs:/([^/]+)(/.*)?")
REGISTERED = re.compile(r"models:/([^/@]+)(?:/([^/]+)|@([^/]+))/?")
LOGGED = re.compile(r"models:/(m-[0-9a-f]{32})/?")
TRUST_HINT = ("Log the model again with this version of rps (python -m rps.run ...), or, if you trust everyone "
              "who can write to that experiment's artifacts, pass --trust-unverified.")


@dataclass
class Source:
    """Where a model is downloaded from, the run that logged it, and that run's manifest digest."""

    uri: str
    run_id: Optional[str]
    digest: Optional[str]
    single_file: bool = False  # one file (an exported .tflite), its digest the file's own SHA-256


def _client():
    import mlflow

    return mlflow.MlflowClient()


def _run_tags(run_id: str) -> dict[str, str]:
    import mlflow

    try:
        return _client().get_run(run_id).data.tags
    except mlflow.exceptions.MlflowException as err:
        raise ResourceError(f"No run {run_id} in the tracking store ({err.error_code}).") from err


def _logged_by(run_id: str, uri: str, what: str) -> Source:
    """The run ``run_id`` as the logger of model ``uri``: its tag must name that very model."""
    tags = _run_tags(run_id)
    if tags.get(MODEL_URI_TAG) != uri:
        raise IntegrityError(f"{what} is {uri}, but its run {run_id} logged {tags.get(MODEL_URI_TAG, 'no model')} "
                             f"(tag {MODEL_URI_TAG}): it cannot be checked against what its run recorded. "
                             "Nothing was downloaded.")
    return Source(uri, run_id, tags.get(MANIFEST_TAG))


def _registered(name: str, version: Optional[str], alias: Optional[str], model: str) -> Source:
    import mlflow

    try:
        found = (_client().get_model_version_by_alias(name, alias) if alias
                 else _client().get_model_version(name, version))
    except mlflow.exceptions.MlflowException as err:
        raise ResourceError(f"No registered model version {model} in the tracking store ({err.error_code}).") from err
    if not found.run_id:
        raise IntegrityError(f"{model} was registered from no run, so its files cannot be checked. {TRUST_HINT}")
    return _logged_by(found.run_id, found.source, f"The source of {model}")


def source(model: str) -> Source:
    """Where ``model`` (an MLflow model URI) is downloaded from and what its files must hash to."""
    import mlflow

    if found := RUN_URI.fullmatch(model):
        run_id, path = found.group(1), (found.group(2) or "").strip("/")
        tags = _run_tags(run_id)
        if MODEL_URI_TAG not in tags:
            raise ResourceError(f"Run {run_id} has no logged model (no {MODEL_URI_TAG} tag); give its model URI.")
        if path.endswith(".tflite"):  # a file the run exported: checked against its own recorded SHA-256
            return Source(model, run_id, tags.get(export_digest_tag(path)), single_file=True)
        return Source(tags[MODEL_URI_TAG] if not path else model, run_id, tags.get(MANIFEST_TAG))
    if found := LOGGED.fullmatch(model):
        try:
            run_id = _client().get_logged_model(found.group(1)).source_run_id
        except mlflow.exceptions.MlflowException as err:
            raise ResourceError(f"No logged model {found.group(1)} in the tracking store ({err.error_code}).") from err
        return _logged_by(run_id, f"models:/{found.group(1)}", model) if run_id else Source(model, None, None)
    if found := REGISTERED.fullmatch(model):
        return _registered(found.group(1), found.group(2), found.group(3), model)
    return Source(model, None, None)  # s3://, file:// ...: no run to check it against


def _unverified(src: Source, trust_unverified: bool) -> None:
    """A model with no recorded digest: refused, unless the user said to trust it."""
    why = (f"Run {src.run_id} recorded no manifest of its model (no {MANIFEST_TAG} tag: it was logged before "
           "rps checked models)" if src.run_id else f"{src.uri} names no run that recorded its files")
    if not trust_unverified:
        raise IntegrityError(f"{why}, so its files cannot be checked before they are loaded. {TRUST_HINT}")
    log.warning("%s; loading it unchecked (--trust-unverified).", why)


def _local(path: Path) -> Path:
    """A local folder, checked against the manifest it (or the model folder around its SavedModel) carries."""
    path = path.resolve()
    model_dir = path.parent.parent if path.parent.name == "artifacts" else path
    if (model_dir / MANIFEST_FILE).is_file():
        verify(model_dir, None, f"The model folder {model_dir}")
    else:
        log.info("%s carries no %s: used as your own, unchecked.", path, MANIFEST_FILE)
    return path


def local_model(model: str, tracking_uri: Optional[str] = None, mlruns_dir: str = "mlruns",
                into: Optional[Path] = None, trust_unverified: bool = False) -> Path:
    """A local, verified folder holding ``model``: the folder itself, or the MLflow model the URI
    names, downloaded into ``into`` (a new temporary folder by default) and checked against its
    run's manifest digest. Raises :class:`~rps.common.errors.IntegrityError` (nothing loaded) when
    a file differs, and when there is no digest unless ``trust_unverified``."""
    path = Path(model).expanduser()
    if path.is_dir():
        return _local(path)
    if path.is_file() and path.suffix == ".tflite":  # a local TFLite file: the user's own
        return path.resolve()
    if "://" not in model and ":/" not in model:
        raise ResourceError(f"MODEL {model} is not a folder nor an MLflow model URI (runs:/<id>, models:/<name>/<v>).")
    import mlflow

    use_store(tracking_uri, mlruns_dir)
    src = source(model)
    if src.digest is None:
        _unverified(src, trust_unverified)
    target = Path(into or tempfile.mkdtemp(prefix="rps-model-"))
    try:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=src.uri, dst_path=str(target)))
    except Exception as err:  # MLflow raises several types for unknown runs/models/paths
        raise ResourceError(f"Could not download the MLflow model {src.uri}: {str(err).splitlines()[0][:300]}") from err
    if src.digest is not None and src.single_file:
        actual = hashlib.sha256(folder.read_bytes()).hexdigest()
        if actual != src.digest:
            raise IntegrityError(f"The file {model} differs from the one run {src.run_id} exported (SHA-256 {actual[:12]}... "
                                 f"instead of {src.digest[:12]}...): it was changed after the run wrote it. Nothing was loaded.")
    elif src.digest is not None:
        verify(folder, src.digest, f"The model {model} (run {src.run_id})")
    return folder


def export_digest_tag(path: str) -> str:
    """The run tag holding the SHA-256 of an exported file (``export/model_int8.tflite`` ->
    ``rps.export.int8.sha256``)."""
    name = Path(path).stem
    return f"rps.export.{name.removeprefix('model_')}.sha256"
