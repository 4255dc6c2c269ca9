"""MlflowReporter: every write rps makes to a run, with a local copy that survives a lost server.

Each param, tag, metric and artifact goes to the run as soon as it is reported. With a staging
folder, artifacts are also written there first, so when the tracking server stops answering in
the middle of a run nothing is lost: the reporter stops writing to the server, asks training to
end after the current epoch (its :class:`~rps.training.outcome.StopSignal`), and :meth:`keep` leaves the run's params, tags,
metrics, plots and trained model in that folder for ``python -m rps.recover``.
"""

from __future__ import annotations

import json
import logging
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import mlflow
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric, Param, RunTag

from rps.common.errors import ResourceError
from rps.inference.manifest import file_hashes
from rps.training.outcome import StopKind, StopSignal
from rps.training.report import Reporter
from rps.tracking.ordering import MetricOrder
from rps.tracking.record import log_classifier, model_name

log = logging.getLogger(__name__)
MODEL_URI_TAG = "rps.model_uri"  # models:/<id> of the run's logged model (rps.predict runs:/<run id> reads it)
# SHA-256 of the logged model's manifest (rps.inference.manifest): what predict, serve and recover
# check a model's files against before anything in them is loaded.
MANIFEST_TAG = "rps.model_manifest_sha256"
RECORD_FILE = "record.json"  # in the staging folder: what the run reported, for rps.recover
# What MLflow's HTTP client says when the server cannot be reached (it wraps requests' errors).
_UNREACHABLE = ("Connection refused", "Max retries exceeded", "timed out", "Connection aborted",
                "RemoteDisconnected", "Failed to establish", "Temporary failure in name resolution",
                "Connection broken", "Connection reset")  # the last two: it died while answering

# What SQLite and PostgreSQL say when an insert breaks a unique key (here: a dataset two jobs add at once).
_DUPLICATE = ("UNIQUE constraint failed", "duplicate key value violates unique constraint")


def _pixels(fig):
    """A drawn matplotlib figure as an RGB array."""
    import numpy as np

    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _save_png(image, path: Path) -> None:
    """An RGB array as a PNG file (what ``savefig`` would write, without drawing the figure again)."""
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG")


class SplitDataset(MetaDataset):
    """A split as an MLflow dataset: name, source (a local folder), digest and a profile (size,
    class counts), so the runs table's Dataset column tells which data and split a run used."""

    def __init__(self, source: str, name: str, digest: str, profile: dict[str, Any]):
        from mlflow.data.dataset_source_registry import get_dataset_source_from_json

        self._profile = profile
        # A local folder, said so: MLflow's guess from a path alone finds two local sources (for
        # "" and "file:" URIs) and warns on every run that the path is ambiguous.
        local = get_dataset_source_from_json(json.dumps({"uri": source}), source_type="local")
        super().__init__(local, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return super().to_dict() | {"profile": json.dumps(self._profile)}


def unreachable(err: BaseException) -> bool:
    """Whether ``err`` means the tracking server did not answer (not that it refused the request)."""
    import requests

    if isinstance(err, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                        requests.exceptions.ChunkedEncodingError)):
        return True
    return isinstance(err, mlflow.exceptions.MlflowException) and any(s in str(err) for s in _UNREACHABLE)


class MlflowReporter(Reporter):
    """Writes what a run reports to its MLflow run (and its staging folder).

    A training run's reporter (``training=True``) writes metrics in the order and at the steps
    :class:`~rps.tracking.ordering.MetricOrder` decides (the objective first, the final values
    linked to the exported model, diagnostics last); :meth:`finish` writes what still waits.
    Other reporters (a sweep's parent) write each metric at once, at step 0. ``go_offline=False``:
    an unreachable server raises at once (rps.recover: nothing to keep).
    """

    def __init__(self, run_id: str, staging: Optional[Path] = None, stop: Optional[StopSignal] = None,
                 training: bool = False, go_offline: bool = True):
        super().__init__()
        self.run_id, self.staging, self.stop, self.go_offline = run_id, staging, stop or StopSignal(), go_offline
        self.client = mlflow.MlflowClient()
        self.offline: Optional[str] = None  # why the server is no longer written to
        self.model_meta: Optional[dict] = None
        self.order = MetricOrder() if training else None

    @contextmanager
    def _sending(self, what: str) -> Iterator[None]:
        """Server unreachable: go offline (keep staging). Artifacts unwritable: a clear error."""
        try:
            yield
        except Exception as err:
            if unreachable(err) and self.go_offline:
                first = str(err).splitlines()[0][:200] if str(err) else ""
                self.offline = f"the tracking server stopped answering ({type(err).__name__}: {first})"
                self.stop.request(StopKind.SERVER_LOST, self.offline)
                log.error("Writing %s failed: %s. Training stops after this epoch; everything the run "
                          "produces is kept in %s.", what, self.offline, self.staging)
            elif isinstance(err, OSError):
                uri = self.client.get_run(self.run_id).info.artifact_uri
                raise ResourceError(
                    f"Could not write {what} to {uri}: {err}. Free disk space or fix that location "
                    "(mlruns_dir, or the experiment's artifact location); this run is marked FAILED."
                ) from err
            else:
                raise

    def _send(self, what: str, call: Callable[[], Any]) -> None:
        if self.offline is None:
            with self._sending(what):
                call()

    def _local(self, path: str) -> Optional[Path]:
        if self.staging is None:
            return None
        local = self.staging / "artifacts" / path
        local.parent.mkdir(parents=True, exist_ok=True)
        return local

    def params(self, values: dict[str, Any]) -> None:
        super().params(values)
        self._send("params", lambda: self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in values.items()]))

    def tags(self, values: dict[str, str]) -> None:
        super().tags(values)
        self._send("tags", lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in values.items()]))

    def metrics(self, values: dict[str, float]) -> None:
        super().metrics(values)
        self._write(self.order.summary(values) if self.order else [(values, 0)])

    def epoch(self, values: dict[str, float], step: int) -> None:
        self._write(self.order.epoch(values, step) if self.order else [(values, step)])
        super().epoch(values, step)

    def finish(self) -> None:
        """The run's end: write the metrics that still wait (a run that logged no model)."""
        if self.order:
            self._write(self.order.rest())

    def _write(self, batches: list, model_id: Optional[str] = None) -> None:
        now = mlflow.utils.time.get_current_time_millis()
        for values, step in batches:
            metrics = [Metric(k, float(v), now, step, model_id=model_id) for k, v in values.items()]
            self._send("metrics", lambda: self.client.log_batch(self.run_id, metrics=metrics))

    def _artifact(self, path: str, write: Callable[[Path], Any], log_directly: Callable[[], Any]) -> None:
        """Write the artifact into staging and log that file, or (no staging) log it directly."""
        local = self._local(path)
        if local is None:
            self._send(path, log_directly)
        else:
            write(local)
            self._send(path, lambda: self.client.log_artifact(self.run_id, str(local), str(Path(path).parent)))

    def figure(self, fig, path: str, compare_as: Optional[str] = None, step: int = 0) -> None:
        if compare_as:  # MLflow's chart view shows logged images side by side across runs
            image = _pixels(fig)
            self._send(compare_as, lambda: self._log_image(image, compare_as, step))
        if compare_as and path.endswith(".png"):  # drawn once: the file holds the very pixels the chart shows
            self._artifact(path, lambda local: _save_png(image, local),
                           lambda: self.client.log_image(self.run_id, image, artifact_file=path))
        else:
            self._artifact(path, fig.savefig, lambda: self.client.log_figure(self.run_id, fig, path))
        super().figure(fig, path, compare_as, step)

    def _log_image(self, image, key: str, step: int) -> None:
        """``log_image(key=...)``, safe when another process logs an image to the same run at once (a
        study's workers that end together both write its parent's summary). MLflow marks the run with
        ``set_tag(mlflow.loggedImages)``, whose first write on a SQL store is a select-then-insert two
        processes race on (IntegrityError: 6 of 60 such pairs here); log_batch retries that race, so
        the mark is set through it first, and log_image's own write then updates the row."""
        from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_IMAGES

        self.client.log_batch(self.run_id, tags=[RunTag(MLFLOW_LOGGED_IMAGES, "True")])
        self.client.log_image(self.run_id, image, key=key, step=step)

    def dataset(self, context: str, name: str, source: str, digest: str, profile: dict[str, Any]) -> None:
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        entity = SplitDataset(source, name, digest, profile)._to_mlflow_entity()
        inputs = [DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])]
        self._send(f"the {context} dataset", lambda: self._log_inputs(inputs))
        super().dataset(context, name, source, digest, profile)

    def _log_inputs(self, inputs) -> None:
        """MLflow looks a dataset up, then inserts it: two jobs of one sweep logging the same split
        at once can both miss it, and the second insert breaks the unique key. The dataset exists
        by then, so one more call links it to this run."""
        try:
            self.client.log_inputs(self.run_id, datasets=inputs)
        except mlflow.exceptions.MlflowException as err:
            if not any(s in str(err) for s in _DUPLICATE):
                raise
            log.info("Dataset %s was registered by another run at the same moment; linking it", inputs[0].dataset.name)
            self.client.log_inputs(self.run_id, datasets=inputs)

    def text(self, text: str, path: str) -> None:
        self._artifact(path, lambda local: local.write_text(text), lambda: self.client.log_text(self.run_id, text, path))
        super().text(text, path)

    def files(self, local: Path, artifact_dir: str) -> None:
        copy = self._local(f"{artifact_dir}/{local.name}")
        if copy is not None:
            shutil.copytree(local, copy) if local.is_dir() else shutil.copy2(local, copy)
        if local.is_dir():
            self._send(artifact_dir, lambda: self.client.log_artifacts(self.run_id, str(local), artifact_dir))
        else:
            self._send(artifact_dir, lambda: self.client.log_artifact(self.run_id, str(local), artifact_dir))
        super().files(local, artifact_dir)

    def model(self, saved_dir: Path, info: dict, register_as: Optional[str] = None) -> None:
        self.model_meta = {"info": info, "register_as": register_as, "saved_model": f"model/{saved_dir.name}"}
        if self.staging is not None:  # kept with the SHA-256 of each file, checked before rps.recover logs it
            shutil.copytree(saved_dir, self.staging / "model" / saved_dir.name)
            self.model_meta["files"] = file_hashes(self.staging / "model" / saved_dir.name)

        def log() -> None:  # named after its run; its URI and manifest kept as its tags; the final metrics linked
            name = model_name(self.client.get_run(self.run_id).info.run_name)
            uri, manifest = log_classifier(saved_dir, info, register_as, name,
                                           step=self.order.end_step if self.order else 0)
            self.client.log_batch(self.run_id, tags=[RunTag(MODEL_URI_TAG, uri), RunTag(MANIFEST_TAG, manifest)])
            if self.order:
                self._write(self.order.for_model(), model_id=uri.rsplit("/", 1)[-1])

        self._send("the trained model", log)
        super().model(saved_dir, info, register_as)

    def keep(self, about: dict[str, Any]) -> Path:
        """Write what the run reported (and ``about`` it) beside its staged artifacts; returns the folder."""
        assert self.staging is not None
        self.staging.mkdir(parents=True, exist_ok=True)
        record = {"run_id": self.run_id, **about, **self.recorded,
                  "epochs": [{"step": step, "metrics": values} for step, values in self.epochs],
                  "model": self.model_meta}
        (self.staging / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str))
        return self.staging

    def discard(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            try:
                self.staging.parent.rmdir()  # mlruns/unsent/, when nothing else is kept there
            except OSError:
                pass
