"""Where a run's results go as soon as they are known (TensorFlow- and MLflow-free).

The pipeline reports everything it produces through a :class:`Reporter`: params, tags, metrics,
per-epoch metrics, figures, texts, files and the trained model. This base class keeps what it
is given in memory (the benchmark and the tests read it); ``rps.tracking.MlflowReporter`` also
writes each piece to the run the moment it arrives, so a run that crashes keeps everything
reported before the crash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional


class Reporter:
    def __init__(self):
        self.recorded: dict[str, dict] = {"params": {}, "tags": {}, "metrics": {}}
        self.epochs: list[tuple[int, dict[str, float]]] = []
        self.artifacts: list[str] = []  # artifact paths, in the order reported
        self.datasets: list[dict[str, Any]] = []  # the data of each split, as reported
        self.texts: dict[str, str] = {}  # each text artifact, by path

    def params(self, values: dict[str, Any]) -> None:
        self.recorded["params"].update(values)

    def tags(self, values: dict[str, str]) -> None:
        self.recorded["tags"].update(values)

    def metrics(self, values: dict[str, float]) -> None:
        self.recorded["metrics"].update(values)

    def epoch(self, values: dict[str, float], step: int) -> None:
        self.epochs.append((step, values))

    def figure(self, fig, path: str, compare_as: Optional[str] = None, step: int = 0) -> None:
        """A matplotlib figure, saved as ``path`` (then closed); ``compare_as`` also logs it as an
        image under that key at ``step``, so runs can be compared image by image."""
        from rps.training.plots import close

        close(fig)
        self.artifacts.append(path)

    def dataset(self, context: str, name: str, source: str, digest: str, profile: dict[str, Any]) -> None:
        """The data a split used: ``context`` (training, validation, test), a name, where it comes
        from, a digest of its membership and content, and its profile (size, class counts)."""
        self.datasets.append({"context": context, "name": name, "source": source, "digest": digest,
                              "profile": profile})

    def text(self, text: str, path: str) -> None:
        self.artifacts.append(path)
        self.texts[path] = text

    def files(self, local: Path, artifact_dir: str) -> None:
        """A local file or folder, stored under ``artifact_dir``."""
        self.artifacts.append(f"{artifact_dir}/{local.name}" if local.is_file() else artifact_dir)

    def model(self, saved_dir: Path, info: dict, register_as: Optional[str] = None) -> None:
        """The trained classifier: the SavedModel it was exported to (rps_model.json inside), its metadata."""
        self.artifacts.append("model")
