"""What a run records: its environment, its config (credentials redacted) and its model."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from omegaconf import DictConfig, OmegaConf

from rps.common.files import restrict_to_umask
from rps.inference.manifest import write_manifest
from rps.training.report import Reporter

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "tensorflow", "tf-keras", "tensorflow-hub", "tensorflow-datasets", "ai-edge-litert",
    "numpy", "hydra-core", "mlflow", "matplotlib",
)
MODEL_REQUIREMENTS = ("tensorflow", "ai-edge-litert", "numpy")
# How much of its training a run did: epochs asked (set at its start), epochs done, and whether
# something stopped it short (a lost tracking server, a pruned trial): rps.partial=true.
EPOCHS_ASKED, EPOCHS_DONE, PARTIAL = "rps.epochs_asked", "rps.epochs_done", "rps.partial"
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact(text: str) -> str:
    """``http://user:secret@host`` -> ``http://***@host``: credentials never reach a run."""
    return _USERINFO.sub("***@", text)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b": value}``."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_params(cfg: DictConfig, resolved: Optional[dict[str, Any]] = None, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """The flattened config as the run used it: ``resolved`` values replace what the config left
    open (e.g. ``dataset.version=null`` -> the version loaded), and plumbing, unset values and knobs
    that changed nothing are left out (:mod:`rps.tracking.params`), except the ``keep`` keys (a
    sweep's swept ones). Credentials are redacted."""
    from rps.tracking.params import run_params

    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    params |= {k: v for k, v in (resolved or {}).items() if k in params and v is not None}
    return {k: redact(v) if isinstance(v, str) else v for k, v in run_params(params, keep).items()}


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


def command_line() -> str:
    """The command as typed: ``python -m rps.run ...`` rather than the module's file path."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = f"-m {spec.name}" if spec is not None and spec.name else sys.argv[0]
    return redact(" ".join([os.path.basename(sys.executable), program, *sys.argv[1:]]))


def environment_tags() -> dict[str, str]:
    """Git commit (when the code is a git checkout), Python and package versions, the command."""
    tags = {f"version.{name}": package_version(name) for name in PACKAGES}
    tags["version.python"] = platform.python_version()
    tags["command"] = command_line()
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["git_commit"] = commit
        tags["git_dirty"] = str(bool(_git("status", "--porcelain", "--untracked-files=no")))
    return tags


def log_config(report: Reporter, cfg: DictConfig, hydra_dir: Optional[Path],
               resolved: Optional[dict[str, Any]] = None, keep: tuple[str, ...] = ()) -> None:
    """The config as params (:func:`config_params`); the composed YAML (and Hydra's record) as artifacts."""
    report.params(config_params(cfg, resolved, keep))
    report.text(redact(OmegaConf.to_yaml(cfg, resolve=True)), "config/config.yaml")
    if hydra_dir is not None and hydra_dir.is_dir():
        report.files(hydra_dir, "config/hydra")


def epochs_asked(cfg: DictConfig) -> int:
    """The epochs a run's config asks for: head training, plus fine-tuning when the backbone trains."""
    return int(cfg.epochs) + (int(cfg.backbone.fine_tune_epochs) if cfg.backbone.trainable else 0)


def epoch_tags(asked: int, done: int, stopped: bool) -> dict[str, str]:
    """:data:`EPOCHS_ASKED`, :data:`EPOCHS_DONE` and :data:`PARTIAL` (``stopped``: training was
    ended by a stop request, not by early stopping or its last epoch)."""
    return {EPOCHS_ASKED: str(asked), EPOCHS_DONE: str(done), PARTIAL: str(stopped and done < asked).lower()}


MODEL_NAME_LENGTH = 64  # the UI's model-name column shows ~30 characters; the name says what differs first


def model_name(run_name: str) -> str:
    """The logged model's name: its run's (a sweep child's swept values, a single run's main
    hyper-parameters, which start with the backbone), as MLflow allows it (no / : . % quotes)."""
    return re.sub(r"[/:.%\"']", "_", run_name.strip().replace(" ", "-"))[:MODEL_NAME_LENGTH] or "model"


@contextmanager
def _manifest_before_upload(digests: list[str]) -> Iterator[None]:
    """Write the model's manifest into the folder MLflow is about to upload, keeping its digest
    (and give its files this process's modes).

    MLflow's ``Model.log`` (3.17) saves a model into a temporary folder, completes its MLmodel
    (model id, artifact path) and uploads it with ``MlflowClient.log_model_artifacts(model_id,
    folder)``: hashing that folder then is hashing exactly what the store receives.
    """
    import mlflow

    upload = mlflow.MlflowClient.log_model_artifacts

    def with_manifest(self, model_id, local_dir, *args, **kwargs):
        restrict_to_umask(Path(local_dir))  # the package's source files in code/ came in 0644
        digests.append(write_manifest(Path(local_dir)))
        return upload(self, model_id, local_dir, *args, **kwargs)

    mlflow.MlflowClient.log_model_artifacts = with_manifest
    try:
        yield
    finally:
        mlflow.MlflowClient.log_model_artifacts = upload


def log_classifier(saved_dir: Path, info: dict, register_as: Optional[str], name: str = "model",
                   step: int = 0) -> tuple[str, str]:
    """The exported SavedModel (saved once, copied as is) as the active run's MLflow model ``name``;
    returns its URI (``models:/<model id>``) and the SHA-256 of its manifest
    (rps.inference.manifest: every file of the logged model, written into it before upload).

    It is an MLflow pyfunc model (rps.inference.classifier.RpsModel, with this package inside it):
    ``mlflow.pyfunc.load_model("runs:/<id>/model").predict(images)`` returns class probabilities
    for float arrays in [0, 1], uint8 arrays of any size or encoded photos, and so does
    ``mlflow models serve``. ``register_as`` also registers it under that name. ``step``: the
    run's step it is the output of (MLflow links the run's metrics at that step to it).
    """
    import warnings

    import mlflow.pyfunc
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, len(info["class_names"])), "probabilities")])
    digests: list[str] = []
    with warnings.catch_warnings(), _manifest_before_upload(digests):
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")  # on purpose (below)
        logged = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(PROJECT_ROOT / "rps" / "inference" / "mlflow_model.py"),  # models from code: no pickle
            artifacts={"saved_model": str(saved_dir)},
            code_paths=[str(PROJECT_ROOT / "rps")],
            # no input schema: inputs come in several forms (rps.inference.classifier checks them);
            # no input example: it would load the model at log time
            signature=ModelSignature(inputs=None, outputs=outputs),
            metadata=info,
            # stated, so MLflow does not reload the model to infer them
            pip_requirements=[f"{name}=={package_version(name)}" for name in MODEL_REQUIREMENTS],
            registered_model_name=register_as,
            step=step,
        )
    if len(digests) != 1:  # MLflow uploaded the model some other way: its files were not hashed
        raise RuntimeError(f"rps could not record the manifest of model {logged.model_uri}: this MLflow "
                           f"version ({mlflow.__version__}) no longer uploads models through log_model_artifacts")
    return logged.model_uri, digests[0]
