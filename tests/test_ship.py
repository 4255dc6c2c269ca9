"""Shipping a model (tiny data): every TFLite format measured and usable by rps.predict, a study
trading validation accuracy against size with its Pareto front, the champion alias and model
card, and rps.reproduce rerunning a run bit for bit. One study (two trials) serves every test."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from conftest import all_runs, clean_env, copy_store, store
from support.commands import run_module
from rps.model.formats import FORMATS, TOLERANCE
from rps.training.outcome import OBJECTIVE

pytestmark = pytest.mark.slow

STUDY = """# @package _global_
experiment_name: ship
epochs: 2
batch_size: 16
split:
  val_size: 12
  test_size: 12
export:
  formats: [float32, float16, dynamic_range, int8]
  latency_runs: 5
  representative_images: 20
champion:
  enabled: true
search:
  study: ship
  trials: 2
  sampler: random
  seed: 3
  pruner: none
  objectives: [selection_val_accuracy, export/int8/size_bytes]
  space:
    hidden: {key: head.hidden_units, type: categorical, choices: [0, 32]}
    lr: {key: optimizer.lr, type: float, low: 1.0e-3, high: 3.0e-2, log: true}
"""


@pytest.fixture(scope="module")
def shipped(tiny_tfds, hub_cache, store_template, tmp_path_factory):
    """The finished study: its parent, its two trials, the store's client, the command's cwd and env."""
    extra = tmp_path_factory.mktemp("conf")
    (extra / "experiment").mkdir()
    (extra / "experiment" / "tiny_ship.yaml").write_text(STUDY)
    cwd = tmp_path_factory.mktemp("ship")
    copy_store(store_template, cwd)
    env = clean_env()
    env.update(TFDS_DATA_DIR=str(tiny_tfds), TFHUB_CACHE_DIR=str(hub_cache), PYTHONUNBUFFERED="1")
    out = run_module("rps.tune", "+experiment=tiny_ship", f"hydra.searchpath=[file://{extra}]", cwd=cwd, env=env,
                     timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = all_runs(cwd)
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)
    return parent, trials, store(cwd), cwd, env


def text(client, run_id: str, path: str, tmp: Path) -> str:
    return Path(client.download_artifacts(run_id, path, str(tmp))).read_text()


def test_every_format_is_measured_on_that_very_file(shipped, tmp_path):
    _, trials, client, _, _ = shipped
    for run in trials:
        metrics = run.data.metrics
        rows = {r["format"]: r for r in csv.DictReader(io.StringIO(text(client, run.info.run_id, "export/formats.csv", tmp_path)))}
        assert list(rows) == ["saved_model", *FORMATS]
        for fmt in ("saved_model", *FORMATS):
            for key in ("size_bytes", "val_accuracy", "test_accuracy", "latency_ms", "latency_p90_ms"):
                assert float(rows[fmt][key]) == pytest.approx(metrics[f"export/{fmt}/{key}"]), (fmt, key)
            assert 0 < metrics[f"export/{fmt}/latency_ms"] <= metrics[f"export/{fmt}/latency_p90_ms"]
        for fmt in FORMATS:
            local = client.download_artifacts(run.info.run_id, f"export/model_{fmt}.tflite", str(tmp_path / fmt))
            assert Path(local).stat().st_size == metrics[f"export/{fmt}/size_bytes"]
            assert run.data.tags[f"export.{fmt}.within_tolerance"] == "true"
        sizes = {fmt: metrics[f"export/{fmt}/size_bytes"] for fmt in FORMATS}
        assert sizes["float16"] < sizes["float32"] and sizes["int8"] < sizes["float32"]
        assert "latency per image at batch 1" in text(client, run.info.run_id, "export/formats.md", tmp_path)


@pytest.fixture(scope="module")
def labelled_photos(tmp_path_factory):
    """30 new photos (10 per class) of other sizes than the training images, named by their class."""
    from rps.synthetic import CLASS_NAMES, tiny_image

    folder = tmp_path_factory.mktemp("labelled")
    rng = np.random.default_rng(11)
    for i in range(30):
        Image.fromarray(tiny_image(i % 3, rng, 64 + i)).save(folder / f"{CLASS_NAMES[i % 3]}_{i}.png")
    return folder


def test_every_format_predicts_like_the_float_model(shipped, labelled_photos, tmp_path):
    """Each .tflite, fetched by its runs:/ URI as rps.predict does, classifies new photos with an
    accuracy within its stated tolerance of the float32 file's."""
    from rps.inference.predict import image_files, load_predictor, predictions
    from rps.tracking.models import local_model

    parent, trials, _, cwd, _ = shipped
    run_id = parent.data.tags["best_run_id"]
    files = image_files([str(labelled_photos)])
    accuracy, probs = {}, {}
    for fmt in FORMATS:
        folder = tmp_path / fmt
        folder.mkdir()
        model = local_model(f"runs:/{run_id}/export/model_{fmt}.tflite", f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}",
                            into=folder)
        predictor = load_predictor(model)
        assert predictor.class_names == ["rock", "paper", "scissors"] and predictor.image_size == 224
        results = list(predictions(predictor, files))
        rows = [row for _, row, error in results if error is None]
        assert len(rows) == 30 and all(error is None for *_, error in results)
        accuracy[fmt] = np.mean([Path(r["file"]).name.startswith(r["label"]) for r in rows])
        probs[fmt] = np.array([[r[f"p_{n}"] for n in predictor.class_names] for r in rows])
    assert accuracy["float32"] >= 0.6, accuracy  # the model learned something these photos show
    for fmt in FORMATS:
        assert abs(accuracy[fmt] - accuracy["float32"]) <= TOLERANCE[fmt], (fmt, accuracy)
    np.testing.assert_allclose(probs["float16"], probs["float32"], atol=1e-2)


def test_the_predict_command_takes_a_tflite_file(shipped, labelled_photos, tmp_path):
    parent, _, client, cwd, env = shipped
    local = client.download_artifacts(parent.data.tags["best_run_id"], "export/model_int8.tflite", str(tmp_path))
    out = run_module("rps.predict", local, str(labelled_photos), "--output", str(tmp_path / "p.json"), cwd=cwd, env=env,
                     timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "model_int8.tflite" in out.stderr and len(json.loads((tmp_path / "p.json").read_text())) == 30
    (tmp_path / "fake.tflite").write_bytes(b"\x00" * 64)
    bad = run_module("rps.predict", str(tmp_path / "fake.tflite"), str(labelled_photos), cwd=cwd, env=env, timeout=300)
    assert bad.returncode == 2 and "not a TFLite model" in bad.stderr and "Traceback" not in bad.stderr


def test_the_study_plots_its_pareto_front(shipped, tmp_path):
    parent, trials, client, _, _ = shipped
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    assert {"study/pareto_front.png", "study/pareto_front.md", "study/pareto_front.csv"} <= names
    front = list(csv.DictReader(io.StringIO(text(client, parent.info.run_id, "study/pareto_front.csv", tmp_path))))
    by_id = {t.info.run_id: t for t in trials}
    assert front and all(row["run_id"] in by_id for row in front)
    for row in front:  # each front trial's values are its run's own metrics
        metrics = by_id[row["run_id"]].data.metrics
        assert float(row[OBJECTIVE]) == metrics[OBJECTIVE]
        assert float(row["export/int8/size_bytes"]) == metrics["export/int8/size_bytes"]


def test_the_champion_is_the_chosen_trial_with_a_card_of_its_numbers(shipped, tmp_path):
    parent, trials, client, _, _ = shipped
    version = client.get_model_version_by_alias("ship", "champion")
    run = client.get_run(parent.data.tags["best_run_id"])
    assert version.run_id == run.info.run_id and version.tags["rps.champion.previous_version"] == "none"
    card = version.description
    assert card == text(client, run.info.run_id, f"model_cards/ship/v{version.version}.md", tmp_path)
    metrics, tags = run.data.metrics, run.data.tags
    for number in (metrics[OBJECTIVE], metrics["test_accuracy"], metrics["export/int8/latency_ms"],
                   metrics["export/saved_model/latency_ms"]):
        assert f"{number:.4f}" in card
    for fmt in FORMATS:
        assert f"| {fmt} | {metrics[f'export/{fmt}/size_bytes'] / 1e6:.2f} |" in card
    assert tags["rps.data.split_digest"] in card and f"python -m rps.reproduce {run.info.run_id}" in card
    assert "## Calibration" in card and f"| {metrics['test_ece']:.4f} |" in card and "Not measured" not in card
    assert "Chosen by: selection_val_accuracy (max)" in card


def _candidate(saved_model: Path, info: dict, objective: float, split: str) -> str:
    """A finished run with a real logged model, the given validation objective and split digest."""
    from rps import tracking

    with tracking.tracked_run(mlflow.get_experiment_by_name("ship").experiment_id, f"candidate {objective}", {}) as report:
        report.metrics({OBJECTIVE: objective})
        report.tags({"rps.data.split_digest": split})
        report.model(saved_model, info)
    return report.run_id


def test_the_alias_moves_only_on_improvement_or_when_forced(shipped, tmp_path):
    """A ladder of candidates for a new registered model: the alias goes to the first, stays on
    a worse, an equal-split-less one, moves to a better one and, forced, to a worse one, and each
    promoted version names the holder it replaced."""
    from rps import tracking

    _, trials, client, _, _ = shipped
    model = Path(mlflow.artifacts.download_artifacts(trials[0].data.tags["rps.model_uri"], dst_path=str(tmp_path)))
    saved, info = model / "artifacts" / "saved_model", json.loads((model / "artifacts" / "saved_model" / "rps_model.json").read_text())
    steps = [(0.6, "a", False, True), (0.5, "a", False, False), (0.6, "a", False, False), (0.9, "b", False, False),
             (0.7, "a", False, True), (0.1, "a", True, True)]
    promoted = []
    for objective, split, force, expected in steps:
        run_id = _candidate(saved, info, objective, split)
        decision = tracking.promote(run_id, "ladder", "champion", force, "a test ladder")
        assert decision.promote is expected, (objective, decision.reason)
        assert client.get_run(run_id).data.tags["rps.champion.decision"] == decision.reason
        holder = client.get_model_version_by_alias("ladder", "champion")
        if expected:
            promoted.append((run_id, objective, str(holder.version)))
        assert holder.run_id == promoted[-1][0]  # a refused candidate leaves the holder in place
    assert len(client.search_model_versions("name = 'ladder'")) == 3  # refused candidates are not registered
    for (before, objective, version), (run_id, _, new) in zip(promoted, promoted[1:]):
        tags = client.get_model_version("ladder", new).tags
        assert (tags["rps.champion.previous_version"], tags["rps.champion.previous_run_id"],
                tags["rps.champion.previous_objective"]) == (version, before, f"{objective:.4f}")
    assert client.get_model_version("ladder", promoted[-1][2]).tags["rps.champion.forced"] == "true"
    assert all("Model card: ladder" in client.get_model_version("ladder", v).description for _, _, v in promoted)


def test_reproduce_reruns_a_trial_bit_for_bit(shipped):
    parent, _, client, cwd, env = shipped
    original = client.get_run(parent.data.tags["best_run_id"])
    out = run_module("rps.reproduce", original.info.run_id, cwd=cwd, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Environment: no difference" in out.stdout and "bit-exact" in out.stdout
    (rerun,) = [r for r in all_runs(cwd) if r.data.tags.get("rps.reproduces") == original.info.run_id]
    assert "mlflow.parentRunId" not in rerun.data.tags and rerun.data.tags["rps.reproduce.verdict"].startswith("bit-exact")
    from rps.runner.reproduce import not_compared

    compared = [name for name in original.data.metrics if not not_compared(name)]
    assert "export/int8/val_accuracy" in compared and f"all {len(compared)} metrics identical" in out.stdout
    for name in compared:
        assert rerun.data.metrics[name] == original.data.metrics[name], name
    assert [v.run_id for v in client.search_model_versions("name = 'ship'")] == [original.info.run_id]


def test_reproduce_says_what_it_cannot_rerun(shipped, capsys):
    from rps.reproduce import main

    parent, _, _, cwd, _ = shipped
    uri = f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}"
    assert main([parent.info.run_id, "--tracking-uri", uri]) == 2
    assert "not a single rps run" in capsys.readouterr().err
    assert main(["0" * 32, "--tracking-uri", uri]) == 2
    assert "No run 00000000" in capsys.readouterr().err
