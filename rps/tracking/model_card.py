"""The model card of a registered model version: what the model is for, the data and split it
was chosen and tested on (with digests), its recipe, its validation and test numbers with the
rule that chose it, calibration, each exported format's size and latency, known limits, and how
to reproduce it. Written from the run's own record (params, metrics, tags, dataset inputs), as a
markdown artifact of the run (``model_cards/<name>/v<version>.md``) and as the version's
description in the Model Registry.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

from rps.training.outcome import OBJECTIVE, OBJECTIVE_LOSS, OBJECTIVE_TAG

MAX_DESCRIPTION = 5000  # characters: the registry's description column (PostgreSQL enforces it)
SPLITS = ("training", "validation", "test")


def card_path(name: str, version: str) -> str:
    return f"model_cards/{name}/v{version}.md"


def _value(metrics: dict, key: str) -> str:
    return f"{metrics[key]:.4f}" if key in metrics else "not logged"


def _datasets(run) -> list[str]:
    """The split table, from the run's MLflow dataset inputs (context, name, digest, size)."""
    import json

    rows = {}
    for item in getattr(run.inputs, "dataset_inputs", None) or []:
        context = next((t.value for t in item.tags if t.key == "mlflow.data.context"), "")
        profile = json.loads(item.dataset.profile or "{}")
        rows[context] = f"| {context} | {item.dataset.name} | {profile.get('examples', '?')} | `{item.dataset.digest}` |"
    tags = run.data.tags
    lines = ["| split | dataset | examples | digest |", "|---|---|---|---|"]
    lines += [rows[c] for c in SPLITS if c in rows] or ["| (no dataset inputs logged) | | | |"]
    return lines + ["", f"Split digest (train, validation and test together): `{tags.get('rps.data.split_digest', 'not logged')}`."]


def _recipe(params: dict, tags: dict) -> list[str]:
    keys = ("backbone.handle", "backbone.trainable", "backbone.fine_tune_from", "backbone.fine_tune_epochs",
            "head.dropout", "head.hidden_units", "head.l2", "optimizer.name", "optimizer.lr", "optimizer.schedule",
            "optimizer.fine_tune_lr", "augment.kind", "label_smoothing", "epochs", "batch_size", "seed",
            "early_stopping.enabled", "split.kind", "split.val_size", "split.test_size", "split.group_by")
    lines = [f"- `{key}`: {params[key]}" for key in keys if key in params]
    return lines + [f"- backbone digest: `{tags.get('rps.backbone_digest', 'not logged')}`"]


CALIBRATION_ROWS = (("val_ece", "expected calibration error, validation"), ("test_ece", "expected calibration error, test"),
                    ("temperature", "temperature fitted on validation"),
                    ("test_ece_calibrated", "expected calibration error, test, after that temperature"))


def _calibration(metrics: dict, params: dict) -> list[str]:
    if "val_ece" not in metrics and "test_ece" in metrics:  # a refit: no validation to fit a temperature on
        return ["| number | value |", "|---|---|", f"| expected calibration error, test `test_ece` | {metrics['test_ece']:.4f} |",
                "", "No temperature: a refit has no validation split to fit one on; the probabilities are uncalibrated.",
                "The run's `plots/reliability.png` and `eval/calibration.json` show the bins."]
    if "val_ece" not in metrics:
        return ["Not measured: this run predates rps's calibration metrics; do not read the probabilities "
                "as calibrated confidence."]
    applied = str(params.get("export.calibrate", "False")).lower() == "true"
    lines = ["| number | value |", "|---|---|"]
    lines += [f"| {what} `{key}` | {metrics[key]:.4f} |" for key, what in CALIBRATION_ROWS if key in metrics]
    return lines + ["", "The model's probabilities are " + ("divided by that temperature (`export.calibrate=true`)."
                                                            if applied else "the uncalibrated ones (`export.calibrate=false`)."),
                    "The run's `plots/reliability.png` and `eval/calibration.json` show the bins; `plots/worst_errors.png` "
                    "its worst mistakes."]


def _numbers(metrics: dict, tags: dict, chosen_by: str) -> list[str]:
    lines = ["| number | value |", "|---|---|",
             f"| validation objective `{OBJECTIVE}` | {_value(metrics, OBJECTIVE)} |",
             f"| validation loss `{OBJECTIVE_LOSS}` | {_value(metrics, OBJECTIVE_LOSS)} |",
             f"| test accuracy (reported only, never used to choose) | {_value(metrics, 'test_accuracy')} |",
             f"| test loss | {_value(metrics, 'test_loss')} |"]
    lines += [f"| `{key}` | {metrics[key]:.4f} |" for key in sorted(metrics) if key.startswith("test_recall_")]
    refit = tags.get("rps.refit_of")
    if refit:
        chosen_by = (f"a refit (validation's images trained too) of run `{refit}`, whose config was chosen on "
                     f"validation{' by sweep `' + tags['rps.refit_parent'] + '`' if tags.get('rps.refit_parent') else ''}")
    return lines + ["", f"The objective measures: {tags.get(OBJECTIVE_TAG, 'not recorded')}.", "",
                    f"Chosen by: {chosen_by}"]


def _formats(metrics: dict) -> list[str]:
    names = sorted({key.split("/")[1] for key in metrics if key.startswith("export/") and key.count("/") == 2},
                   key=lambda n: (n != "saved_model", n))
    if not names:
        return ["Only the SavedModel (the MLflow model) was exported, and not measured: a run with "
                "`export.formats=[float32,float16,dynamic_range,int8]` measures each format."]
    lines = ["| format | size (MB) | val accuracy | test accuracy | latency ms (batch 1, median) |", "|---|---|---|---|---|"]
    for n in names:
        size = metrics.get(f"export/{n}/size_bytes")
        lines.append(f"| {n} | {'-' if size is None else f'{size / 1e6:.2f}'} | {_value(metrics, f'export/{n}/val_accuracy')} "
                     f"| {_value(metrics, f'export/{n}/test_accuracy')} | {_value(metrics, f'export/{n}/latency_ms')} |")
    return lines + ["", "Latency is a number of the machine that ran the run (see Environment); the run's "
                        "`export/formats.md` says how it was measured."]


def _limits(params: dict, metrics: dict) -> list[str]:
    lines = []
    if params.get("split.kind") == "official":
        lines.append(f"- Test accuracy {_value(metrics, 'test_accuracy')} is on the dataset's own test set, whose "
                     "hands training never saw: its accuracy on unseen hands.")
    else:
        lines.append("- The tutorial split pools the dataset's train and test images before cutting them, so test "
                     "images can show hands training saw: test accuracy overstates accuracy on unseen hands. Runs "
                     "on `split=official` measure that (the project's docs/results.md).")
    if params.get("dataset.kind", "tfds") == "tfds":
        lines.append("- TFDS `rock_paper_scissors` holds computer-generated hands on a white background; "
                     "accuracy on real photos was not measured.")
    lines.append("- It always answers one of its classes: an image with no hand, or another gesture, still gets one.")
    n_val = params.get("data.n_val")
    if n_val and int(n_val) > 0:  # (a refit has none)
        lines.append(f"- The validation set has {n_val} images: one image moves the objective by {1 / int(n_val):.4f}.")
    return lines


def render(run, name: str, version: str, chosen_by: str, champion: Optional[str] = None) -> str:
    """The card of ``name`` version ``version``, logged by ``run`` (an MLflow Run)."""
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    started = datetime.fromtimestamp(run.info.start_time / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    classes = params.get("data.class_names", "?").replace(",", ", ")
    sections = [
        f"# Model card: {name} version {version}", "",
        f"Run `{run.info.run_id}` ({run.info.run_name}), started {started}; logged model "
        f"`{tags.get('rps.model_uri', 'not logged')}`.", "",
        "## Intended use", "",
        f"Classifies a photo of one hand showing a rock-paper-scissors gesture into {classes} (class "
        "probabilities in that order), for images like its training data. Any image size: it is resized "
        "as in training. Not for decisions about people, nor for images unlike the training data.", "",
        "## Data and split", "", f"Dataset version: {tags.get('dataset_version', params.get('dataset.version', '?'))}; "
        f"classes {classes}.", "", *_datasets(run), "",
        "## Recipe", "", *_recipe(params, tags), "",
        "## Validation and test", "", *_numbers(metrics, tags, chosen_by),
        *(["", f"Champion: {champion}"] if champion else []), "",
        "## Calibration", "", *_calibration(metrics, params), "",
        "## Formats", "", *_formats(metrics), "",
        "## Known limits", "", *_limits(params, metrics), "",
        "## Environment", "",
        f"Commit `{tags.get('git_commit', 'not recorded')}` (uncommitted changes: {tags.get('git_dirty', '?')}), "
        f"Python {tags.get('version.python', '?')}, TensorFlow {tags.get('version.tensorflow', '?')}, "
        f"{tags.get('rps.env.cpu', '?')} (AVX-512 {tags.get('rps.env.avx512', '?')}, {tags.get('rps.env.cores', '?')} "
        f"cores), package lock `{tags.get('rps.env.lock_sha256', 'not recorded')[:16]}`.", "",
        "## Reproduce", "", "```bash", f"python -m rps.reproduce {run.info.run_id}", "```",
        "It reruns the run from its logged config and says whether the numbers match (bit for bit on the "
        "same machine and code).",
    ]
    return "\n".join(sections) + "\n"


def description(card: str, run_id: str, path: str) -> str:
    """The card as a registry description: whole when it fits, else cut with a pointer to the artifact."""
    if len(card) <= MAX_DESCRIPTION:
        return card
    note = f"\n\n… (cut to fit the registry: the whole card is the artifact {path} of run {run_id})"
    return card[: MAX_DESCRIPTION - len(note)] + note
