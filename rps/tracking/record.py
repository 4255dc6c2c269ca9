"""What a run records, and the reporter that writes it to MLflow as soon as it is known.

Every write rps makes to MLflow goes through :class:`MlflowReporter` (the runs' lifecycle in
``runs.py`` aside), addressed by run id, so the same class records a job and a sweep's parent.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Optional

import mlflow
from mlflow.entities import Metric, Param, RunTag
from omegaconf import DictConfig, OmegaConf

from rps.errors import ResourceError
from rps.report import Reporter

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "tensorflow", "tf-keras", "tensorflow-hub", "tensorflow-datasets",
    "numpy", "hydra-core", "mlflow", "matplotlib",
)
MODEL_REQUIREMENTS = ("tensorflow", "tf-keras", "tensorflow-hub")
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


def config_params(cfg: DictConfig) -> dict[str, Any]:
    return {k: redact(v) if isinstance(v, str) else v for k, v in flatten(OmegaConf.to_container(cfg, resolve=True)).items()}


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


class MlflowReporter(Reporter):
    """Writes each param, tag, metric and artifact to the run ``run_id`` as soon as it is reported."""

    def __init__(self, run_id: str):
        super().__init__()
        self.run_id = run_id
        self.client = mlflow.MlflowClient()

    @contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Turn a failure to write artifacts (disk full, unwritable store) into a clear error."""
        try:
            yield
        except OSError as err:
            uri = self.client.get_run(self.run_id).info.artifact_uri
            raise ResourceError(
                f"Could not write {what} to {uri}: {err}. Free disk space or fix that location "
                "(mlruns_dir, or the experiment's artifact location); this run is marked FAILED."
            ) from err

    def params(self, values: dict[str, Any]) -> None:
        super().params(values)
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in values.items()])

    def tags(self, values: dict[str, str]) -> None:
        super().tags(values)
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in values.items()])

    def metrics(self, values: dict[str, float]) -> None:
        super().metrics(values)
        self._log_metrics(values, 0)

    def epoch(self, values: dict[str, float], step: int) -> None:
        super().epoch(values, step)
        self._log_metrics(values, step)

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        now = mlflow.utils.time.get_current_time_millis()
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def figure(self, fig, path: str) -> None:
        with self._writing(path):
            self.client.log_figure(self.run_id, fig, path)
        super().figure(fig, path)

    def text(self, text: str, path: str) -> None:
        with self._writing(path):
            self.client.log_text(self.run_id, text, path)
        super().text(text, path)

    def files(self, local: Path, artifact_dir: str) -> None:
        with self._writing(artifact_dir):
            if local.is_dir():
                self.client.log_artifacts(self.run_id, str(local), artifact_dir)
            else:
                self.client.log_artifact(self.run_id, str(local), artifact_dir)
        super().files(local, artifact_dir)

    def model(self, exported, saved_dir: Path, info: dict, register_as: Optional[str] = None) -> None:
        with self._writing("the trained model"):
            _log_classifier(exported, info, register_as)
            self.client.log_artifacts(self.run_id, str(saved_dir), "saved_model")
        super().model(exported, saved_dir, info, register_as)


def log_config(report: Reporter, cfg: DictConfig, hydra_dir: Optional[Path]) -> None:
    """The flattened resolved config as params; the YAML (and Hydra's record) as artifacts."""
    report.params(config_params(cfg))
    report.text(redact(OmegaConf.to_yaml(cfg, resolve=True)), "config/config.yaml")
    if hydra_dir is not None and hydra_dir.is_dir():
        report.files(hydra_dir, "config/hydra")


def _log_classifier(exported, info: dict, register_as: Optional[str]) -> None:
    """The exported image -> probabilities module as an MLflow model of the active run.

    ``mlflow.pyfunc.load_model("runs:/<id>/model")`` reloads it and ``predict`` returns class
    probabilities. ``register_as`` also registers it under that name.
    """
    import mlflow.tensorflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    size = info["image_size"]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, size, size, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(info["class_names"])), "probabilities")]),
    )
    mlflow.tensorflow.log_model(
        exported,
        name="model",
        signature=signature,
        metadata=info,
        saved_model_kwargs={"signatures": {"serving_default": exported.__call__}},
        # stated, so MLflow does not reload the model to infer them
        pip_requirements=[f"{name}=={package_version(name)}" for name in MODEL_REQUIREMENTS],
        registered_model_name=register_as,
    )
