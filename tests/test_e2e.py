"""`python -m rps.run` in a subprocess on the tiny offline mirrors, checked through MlflowClient."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, TINY_SPLIT, all_runs, clean_env, compose, free_port, run_cli, split_examples, store
from support.commands import run_module, start_module
from test_quiet import PROBE

pytestmark = pytest.mark.slow
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


@pytest.fixture(scope="module")
def finished_run(tiny_tfds, hub_cache, tmp_path_factory):
    """One 2-epoch run on the tiny data, launched from an empty directory, with a feature cache
    of its own (so it builds the entry whatever other tests ran before)."""
    cwd = tmp_path_factory.mktemp("launch")
    env = clean_env()
    env.update(TFDS_DATA_DIR=str(tiny_tfds), TFHUB_CACHE_DIR=str(hub_cache),
               XDG_CACHE_HOME=str(tmp_path_factory.mktemp("own_cache")))
    result = run_cli("epochs=2", *TINY_SPLIT, cwd=cwd, env=env, cold=True)  # its start-up output is checked
    assert result.returncode == 0, result.stderr[-3000:]
    runs = all_runs(cwd)
    assert len(runs) == 1
    return cwd, runs[0], env, result


# Every line a plain run prints (stdout and stderr, a log, not a terminal): rps's own progress and
# Keras' line per epoch. No library warning or INFO line a user cannot act on, no carriage returns.
STAMP = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]"
ALLOWED_LINES = [re.compile(pattern) for pattern in (
    STAMP + r"\[rps\.tracking\.store\]\[INFO\] - New tracking store .+/mlruns/mlflow\.db: creating its tables \(first use only\)",
    STAMP + r"\[rps\.runner\.job\]\[INFO\] - MLflow run [0-9a-f]{32} in experiment 'rps'",
    STAMP + r"\[rps\.training\.pipeline\]\[INFO\] - Feature cache on: frozen backbone, no augmentation",
    STAMP + r"\[rps\.model\.backbone\]\[INFO\] - \d+/84 images \(\d+%\), \d+ images/s",
    STAMP + r"\[rps\.model\.backbone\]\[INFO\] - Backbone features of 84 images in [\d.]+ s \([\d.]+ images/s\)",
    STAMP + r"\[rps\.training\.pipeline\]\[INFO\] - Feature cache built: .+\.npz \(features by .+\)",
    r"Epoch [12]/2",
    r"4/4 - \d+m?s - loss: [\d.]+ - accuracy: [\d.]+ - val_loss: [\d.]+ - val_accuracy: [\d.]+ - \d+m?s/epoch - \d+m?s/step",
    STAMP + r"\[rps\.training\.pipeline\]\[INFO\] - validation accuracy [\d.]+ \(chosen on\), test accuracy [\d.]+ "
            r"\(reported only\)",
)]


def test_a_plain_run_prints_only_lines_a_user_can_act_on(finished_run):
    """No CUDA probe, oneDNN, dataset-source warning, MLflow table creation, font cache or
    progress-bar redraws: each line matches the allow-list, and the run's own lines are there.
    A cold process at the default TF log level (test_quiet checks the levels 2 and 3, and -v)."""
    result = finished_run[3]
    assert "\r" not in result.stdout + result.stderr
    shown = [noise for noise in PROBE if noise in result.stdout + result.stderr]
    assert not shown, (shown, result.stderr[-2000:])  # TensorFlow's start-up lines, filtered by default
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    unexpected = [line for line in lines if not any(p.fullmatch(line) for p in ALLOWED_LINES)]
    assert not unexpected, unexpected
    assert sum(bool(ALLOWED_LINES[1].fullmatch(line)) for line in lines) == 1, "the run's own lines still show"
    assert sum(line.startswith("Epoch ") for line in lines) == 2


def test_run_finishes_with_params_tags_and_epoch_metrics(finished_run):
    import mlflow

    cwd, run, *_ = finished_run
    assert run.info.status == "FINISHED"
    params = run.data.params
    for key, value in {"head.dropout": "0.5", "optimizer.lr": "0.001", "optimizer.name": "adam",
                       "epochs": "2", "batch_size": "16", "split.kind": "tutorial",
                       "dataset.name": "rock_paper_scissors", "data.n_train": "60",
                       "data.n_val": "12", "data.n_test": "12", "seed": "42"}.items():
        assert params[key] == value, key
    tags = run.data.tags
    assert tags["dataset_version"] == "3.0.0"
    assert tags["backbone_handle"].startswith("https://tfhub.dev/")
    assert tags["version.tensorflow"].startswith("2.") and tags["version.mlflow"].startswith("3.")
    assert len(tags["git_commit"]) == 40
    assert tags["command"] == f"{os.path.basename(sys.executable)} -m rps.run epochs=2 " + " ".join(TINY_SPLIT)
    assert tags["rps.pid"].isdigit() and tags["rps.host"] == os.uname().nodename  # who owned it (liveness)
    client = store(cwd)
    for name in EPOCH_METRICS:
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in history) == [1, 2], name
    metrics = run.data.metrics
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}  # MLflow's Dataset column
    assert sorted(inputs) == ["test", "training", "validation"]
    for context, n in (("training", 60), ("validation", 12), ("test", 12)):
        profile = json.loads(inputs[context].profile)
        assert profile["examples"] == n and sum(profile["class_counts"].values()) == n
        assert inputs[context].name.startswith("rock_paper_scissors-3.0.0-tutorial-")
        assert json.loads(inputs[context].source)["uri"].endswith("rock_paper_scissors/3.0.0")
    assert len({d.digest for d in inputs.values()}) == 3
    model = mlflow.get_logged_model(tags["rps.model_uri"].split("/")[-1])
    assert model.name == "mobilenet_v2-tutorial-dropout=0_5-adam-lr=0_001", "named after its run, once"
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    for key in ("confusion_matrix", "sample_predictions"):  # comparable across runs in the chart view
        assert any(p.startswith(f"images/{key}+step+2+") and p.endswith(".png") for p in images), images
    # chosen on: the exported model's validation accuracy; without early stopping, the last epoch's
    last = max(client.get_metric_history(run.info.run_id, "val_accuracy"), key=lambda m: m.step)
    assert metrics["selection_val_accuracy"] == pytest.approx(last.value) and metrics["epochs_trained"] == 2
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["test_loss"] > 0
    for cls in ("rock", "paper", "scissors"):
        assert f"test_precision_{cls}" in metrics and f"test_recall_{cls}" in metrics


def test_store_stays_in_the_launch_directory(finished_run):
    cwd, run, *_ = finished_run
    assert sorted(p.name for p in cwd.iterdir()) == ["mlruns"]
    assert (cwd / "mlruns" / "mlflow.db").is_file()
    assert run.info.artifact_uri.startswith((cwd / "mlruns").as_uri())


def test_what_a_run_writes_is_its_users_alone_and_the_run_says_how_many_epochs_it_trained(finished_run):
    """Folders 0700, files 0600: the store, Hydra's records, the artifacts and the feature cache."""
    cwd, run, env, _ = finished_run
    written = [cwd / "mlruns", *(cwd / "mlruns").rglob("*"), *Path(env["XDG_CACHE_HOME"]).rglob("*")]
    assert any(p.name == "config.yaml" and p.parent.name == ".hydra" for p in written)
    shared = [f"{p} {oct(p.stat().st_mode & 0o777)}" for p in written if p.stat().st_mode & 0o077]
    assert not shared, shared[:10]
    tags = run.data.tags
    assert (tags["rps.epochs_asked"], tags["rps.epochs_done"], tags["rps.partial"]) == ("2", "2", "false")


CREDENTIAL_COMMANDS = {
    "single run": (["rps.run", "tracking_uri=http://alice:{secret}@127.0.0.1:9"], "carries credentials"),
    "sweep": (["rps.run", "-m", "head.dropout=0.1,0.2", "tracking_uri=http://alice:{secret}@127.0.0.1:9"],
              "carries credentials"),
    "study": (["rps.tune", "search.storage=postgresql://rps:{secret}@db/optuna"], "carries a password or token"),
    "secret key": (["rps.run", "+server.api_token={secret}"], "names a secret"),
    "environment": (["rps.run", "epochs=1"], "MLFLOW_TRACKING_URI carries credentials"),
}


@pytest.mark.parametrize("command", list(CREDENTIAL_COMMANDS))
def test_a_credential_on_the_command_line_is_refused_before_anything_is_written(offline_env, tmp_path, command):
    """Hydra would write it into .hydra/*.yaml under the run's folder: nothing is written at all."""
    secret = "s3cr3t-" + os.urandom(6).hex()
    args, expected = CREDENTIAL_COMMANDS[command]
    env = offline_env | {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    if command == "environment":
        env["MLFLOW_TRACKING_URI"] = f"http://alice:{secret}@127.0.0.1:9"
    project = tmp_path / "project"  # a folder without a store (offline_env's tmp_path has one)
    project.mkdir()
    result = run_module(*(a.format(secret=secret) for a in args), cwd=project, env=env, timeout=300)
    assert result.returncode == 2 and expected in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and secret not in result.stdout + result.stderr
    assert "MLFLOW_TRACKING_PASSWORD" in result.stderr and "Nothing was written" in result.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in written if secret.encode() in p.read_bytes()]
    assert not (project / "mlruns").exists(), sorted(map(str, written))


def test_artifacts_are_valid_images_and_config(finished_run, tmp_path):
    import mlflow

    cwd, run, *_ = finished_run
    store(cwd)
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path))
    for name in ("sample_predictions", "training_curves", "confusion_matrix", "reliability", "worst_errors"):
        with Image.open(f"{local}/plots/{name}.png") as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) > 100
    calibration = json.loads(Path(f"{local}/eval/calibration.json").read_text())
    errors = json.loads(Path(f"{local}/eval/errors.json").read_text())
    assert calibration["fitted_on"] == "val" and len(calibration["test"]["reliability"]) == calibration["bins"]
    assert sum(b["count"] for b in calibration["val"]["reliability"]) == errors["val"]["examples"] == 12
    assert errors["test"]["examples"] == 12 and len(errors["test"]["worst"]) == errors["test"]["errors"]
    metrics = run.data.metrics
    assert metrics["test_ece"] == pytest.approx(calibration["test"]["ece"]) and metrics["temperature"] > 0
    assert metrics["val_loss_calibrated"] <= metrics["selection_val_loss"] + 1e-6, "fitted on validation: never worse there"
    config = (tmp_path / "config" / "config.yaml").read_text()
    assert "dropout: 0.5" in config and "val_size: 12" in config
    assert (tmp_path / "config" / "hydra" / "overrides.yaml").is_file()
    model = mlflow.artifacts.download_artifacts(run.data.tags["rps.model_uri"], dst_path=str(tmp_path / "model"))
    assert (Path(model) / "artifacts" / "saved_model" / "saved_model.pb").is_file()
    info = json.loads((Path(model) / "artifacts" / "saved_model" / "rps_model.json").read_text())
    assert info["class_names"] == ["rock", "paper", "scissors"] and info["image_size"] == 224
    assert (Path(model) / "code" / "rps" / "inference" / "classifier.py").is_file(), "the model carries the code that serves it"


def logged_model_on_test_split(cwd, run, tiny_tfds):
    """The run's logged MLflow model applied to its test split: (probabilities, labels, model)."""
    import mlflow

    from rps.data.examples import load_tfds

    from rps.data.pipelines import make_dataset

    from rps.data.sources import locate_tfds

    store(cwd)
    model = mlflow.pyfunc.load_model(run.data.tags["rps.model_uri"])
    cfg = compose(f"dataset.data_dir={tiny_tfds}", *TINY_SPLIT)
    train, test, _, _ = load_tfds(locate_tfds(cfg.dataset))
    splits = split_examples(train, test, cfg.split, cfg.seed)
    images, onehot = zip(*make_dataset(splits["test"], 224, 64, 3).as_numpy_iterator())
    images, labels = np.concatenate(images), np.concatenate(onehot).argmax(1)
    return images, model.predict(images), labels, model


def test_logged_model_reloads_and_reproduces_the_test_accuracy(finished_run, tiny_tfds):
    """The model in the store is the trained one: it scores the logged accuracy on the same split."""
    import mlflow
    import tensorflow as tf

    cwd, run, *_ = finished_run
    images, probs, labels, model = logged_model_on_test_split(cwd, run, tiny_tfds)
    assert model.metadata.metadata["class_names"] == ["rock", "paper", "scissors"]
    assert model.metadata.signature.outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3)
    assert probs.shape == (12, 3)
    assert np.mean(probs.argmax(1) == labels) == pytest.approx(run.data.metrics["test_accuracy"])
    saved = Path(mlflow.artifacts.download_artifacts(run.data.tags["rps.model_uri"])) / "artifacts" / "saved_model"
    raw = tf.saved_model.load(str(saved))  # the plain SavedModel inside agrees (the pyfunc runs XNNPACK)
    np.testing.assert_allclose(raw(images).numpy(), probs, atol=1e-4)


def test_fine_tuned_run_logs_its_phases_and_exports_the_fine_tuned_model(tiny_tfds, offline_env, tmp_path):
    """Phase 1 on cached features, phase 2 on images; the logged model is the phase-2 model, with
    the temperature fitted on validation applied (export.calibrate=true)."""
    from mlflow import MlflowClient

    from rps.training.evaluate import evaluate

    result = run_cli("epochs=2", *TINY_SPLIT, "backbone.trainable=true", "backbone.fine_tune_epochs=2",
                     "optimizer.fine_tune_lr=0.01", "export.calibrate=true", cwd=tmp_path, env=offline_env)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.tags["feature_cache"] in ("built", "hit")
    assert run.data.tags["feature_cache_fine_tune"].startswith("off: the backbone cannot be split")
    phases = [(m.step, m.value) for m in MlflowClient().get_metric_history(run.info.run_id, "phase")]
    assert sorted(phases) == [(1, 1), (2, 1), (3, 2), (4, 2)]
    assert len(MlflowClient().get_metric_history(run.info.run_id, "val_accuracy")) == 4
    _, probs, labels, model = logged_model_on_test_split(tmp_path, run, tiny_tfds)
    # the test loss pins the weights (a phase-1 or untrained model would not reproduce it) and the
    # temperature: the model returns the probabilities the run reported as calibrated
    metrics, _ = evaluate(probs, labels, ["rock", "paper", "scissors"])
    assert model.metadata.metadata["temperature"] == pytest.approx(run.data.metrics["temperature"])
    assert metrics["test_loss"] == pytest.approx(run.data.metrics["test_loss_calibrated"], rel=1e-4)
    assert metrics["test_accuracy"] == pytest.approx(run.data.metrics["test_accuracy"])


def test_image_folder_with_local_backbone_and_skipped_corrupt_file(tiny_backbone, offline_env, tmp_path):
    from rps.synthetic import write_image_folder

    from rps.synthetic import bomb_png

    root = write_image_folder(tmp_path / "hands", per_class=10)
    (root / "rock" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "paper" / "bomb.png").write_bytes(bomb_png())  # 20000x20000 pixels: never decoded
    env = {k: v for k, v in offline_env.items() if k != "TFHUB_CACHE_DIR"}
    result = run_cli("dataset=image_folder", f"dataset.path={root}", "dataset.skip_corrupt=true",
                     "dataset.max_pixels=2000000", f"backbone.handle={tiny_backbone}", "split.val_size=0.2",
                     "split.test_size=0.2", "epochs=1", "batch_size=8", "num_samples=4", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bomb.png is 20000x20000 pixels (400 Mpx), more than the limit of 2 Mpx" in result.stdout + result.stderr
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["skipped_corrupt_images"] == 2
    assert run.data.params["data.class_names"] == "paper,rock,scissors"
    assert run.data.params["data.n_val"] == "6" and run.data.params["data.n_train"] == "18"


def test_corrupt_file_fails_the_run_and_names_it(offline_env, tiny_backbone, tmp_path):
    from rps.synthetic import write_image_folder

    root = write_image_folder(tmp_path / "hands", per_class=4)
    (root / "paper" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = run_cli("dataset=image_folder", f"dataset.path={root}", f"backbone.handle={tiny_backbone}",
                     "split.val_size=2", "split.test_size=2", cwd=tmp_path, env=offline_env)
    assert result.returncode == 2
    assert "cut.png" in result.stderr and "skip_corrupt" in result.stderr
    assert "Traceback" not in result.stderr
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FAILED"


def test_bad_config_fails_in_seconds_without_a_run(offline_env, tmp_path):
    project = tmp_path / "project"  # a folder without a store (offline_env's tmp_path has one)
    project.mkdir()
    result = run_cli("head.dropout=1.5", cwd=project, env=offline_env)
    assert result.returncode == 2 and result.seconds < 15
    assert "head.dropout=1.5" in result.stderr and "[0, 1)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project / "mlruns" / "mlflow.db").exists()
    unknown = run_cli("optimizer=rmsprop", cwd=tmp_path, env=offline_env)
    assert unknown.returncode != 0 and "Available options" in unknown.stderr and "sgd" in unknown.stderr
    too_big = run_cli(cwd=tmp_path, env=offline_env)  # 600 val + 400 test > 84 tiny examples
    assert too_big.returncode == 2 and "does not fit" in too_big.stderr
    assert all_runs(tmp_path) == []


def test_offline_without_mirrors_fails_fast_naming_the_knobs(offline_env, tmp_path):
    """On a machine without network (simulated for the run's process, whatever this machine has)."""
    no_network = offline_env | {"PYTHONPATH": str(ROOT / "tests" / "support" / "no_network")}
    probe = subprocess.run([sys.executable, "-c", "import urllib.request; urllib.request.urlopen('https://tfhub.dev', timeout=5)"],
                           env=no_network, capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "no network" in probe.stderr, "the simulation must cut the network"
    empty = tmp_path / "empty"
    empty.mkdir()
    no_data = run_cli(*TINY_SPLIT, cwd=tmp_path, env=no_network | {"TFDS_DATA_DIR": str(empty)})
    assert no_data.returncode == 2 and no_data.seconds < 30, no_data.stderr[-2000:]
    assert "TFDS_DATA_DIR" in no_data.stderr and "Traceback" not in no_data.stderr
    no_hub = run_cli(*TINY_SPLIT, cwd=tmp_path, env=no_network | {"TFHUB_CACHE_DIR": str(empty)})
    assert no_hub.returncode == 2 and no_hub.seconds < 30, no_hub.stderr[-2000:]
    assert "TFHUB_CACHE_DIR" in no_hub.stderr and "Traceback" not in no_hub.stderr
    assert list(empty.iterdir()) == [], "no partial downloads left behind"
    assert all_runs(tmp_path) == [], "no MLflow run is created"


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_training_ends_the_run_killed_keeping_finished_epochs(offline_env, tmp_path, signum, code):
    # Started with SIGINT ignored, as a shell starts background jobs: rps must still honour Ctrl-C.
    proc = start_module("rps.run", "epochs=100000", *TINY_SPLIT, cwd=tmp_path, env=offline_env, ignore_sigint=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            time.sleep(1)
            runs = all_runs(tmp_path)  # offline_env made the store: no wait for its file
            if runs and len(store(tmp_path).get_metric_history(runs[0].info.run_id, "val_accuracy")) >= 2:
                break
        else:
            pytest.fail("training never reached its second epoch")
        proc.send_signal(signum)
        try:
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"still running 60 s after the signal; its stderr ends:\n{proc.communicate()[1][-3000:]}")
    finally:
        proc.kill()
    assert proc.returncode == code, stderr[-2000:]
    assert "KILLED" in stderr and f"interrupted ({'Ctrl-C' if signum == signal.SIGINT else f'signal {int(signum)}'})" in stderr
    (run,) = all_runs(tmp_path)
    assert run.info.status == "KILLED"
    kept = store(tmp_path).get_metric_history(run.info.run_id, "val_accuracy")
    assert 2 <= len(kept) < 100000


def test_image_size_the_backbone_rejects_leaves_no_run(offline_env, tmp_path):
    from rps.synthetic import save_tiny_backbone

    fixed = save_tiny_backbone(tmp_path / "fixed224", input_size=224)
    result = run_cli(f"backbone.handle={fixed}", "backbone.image_size=160", *TINY_SPLIT, cwd=tmp_path, env=offline_env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "backbone.image_size=160" in result.stderr and "(None, 224, 224, 3)" in result.stderr
    assert all_runs(tmp_path) == []


def test_unreachable_tracking_server_fails_before_training(offline_env, tmp_path):
    port = free_port()  # a port nothing listens on
    result = run_cli(*TINY_SPLIT, cwd=tmp_path, env=offline_env | {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})
    assert result.returncode == 2 and result.seconds < 30
    assert f"http://127.0.0.1:{port} does not answer" in result.stderr and "Traceback" not in result.stderr
    assert "Epoch" not in result.stdout


def test_unwritable_artifact_store_fails_before_training(offline_env, tmp_path):
    (tmp_path / "mlruns" / "artifacts").write_text("a file where the artifact folder should be")
    result = run_cli(*TINY_SPLIT, cwd=tmp_path, env=offline_env)
    assert result.returncode == 2 and "not writable" in result.stderr and "Traceback" not in result.stderr
    assert "Epoch" not in result.stdout


def test_concurrent_runs_on_a_new_store_complete_and_a_warm_run_repeats_the_cold_one(finished_run, tmp_path):
    """Two runs start at once on a store that does not exist yet (table creation races). One repeats
    finished_run: that one started as a real process, this one forked from the tests' warm fork server
    (tests/support/commands.py): the same numbers, so a warm command is the real command."""
    _, first, env, _ = finished_run  # its env: the same feature cache
    procs = [start_module("rps.run", "epochs=2", *TINY_SPLIT, *seed, cwd=tmp_path, env=env) for seed in ([], ["seed=0"])]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-1500:] for _, err in outputs]
    runs = all_runs(tmp_path)
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "42"]
    training = {next(i.dataset.digest for i in r.inputs.dataset_inputs if i.tags[0].value == "training") for r in runs}
    assert len(training) == 2, "another seed draws another split: another digest"
    assert all(r.info.status == "FINISHED" and "test_accuracy" in r.data.metrics for r in runs)
    (second,) = [r for r in runs if r.data.params["seed"] == "42"]
    assert (first.data.tags["feature_cache"], second.data.tags["feature_cache"]) == ("built", "hit")
    assert "timing_feature_extraction_seconds" not in second.data.metrics  # a hit logs the time it took to load
    assert second.data.metrics["timing_feature_load_seconds"] < first.data.metrics["timing_feature_extraction_seconds"]
    for name in EPOCH_METRICS + ("test_accuracy", "test_loss"):
        assert second.data.metrics[name] == pytest.approx(first.data.metrics[name], abs=1e-6), name
    digests = [sorted((i.tags[0].value, i.dataset.digest) for i in r.inputs.dataset_inputs) for r in (first, second)]
    assert digests[0] == digests[1], "same data, split and seed: the same dataset digests"


def test_artifact_write_failure_fails_the_run_with_a_clear_error(offline_env, tmp_path):
    """An experiment whose artifact location cannot be written (as on a full or broken disk)."""
    (tmp_path / "blocker").write_text("a file, so nothing can be created below it")
    store(tmp_path).create_experiment("rps", artifact_location=(tmp_path / "blocker" / "artifacts").as_uri())
    result = run_cli(*TINY_SPLIT, cwd=tmp_path, env=offline_env)
    assert result.returncode == 2 and "Could not write config/config.yaml" in result.stderr
    assert "Traceback" not in result.stderr and "Epoch" not in result.stdout
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FAILED" and "Could not write" in run.data.tags["error"]


@pytest.mark.parametrize("uri", ["sqlite:///{tmp}/blocker/mlflow.db", "file:{tmp}/plain-file-store"])
def test_unusable_tracking_store_uri_fails_fast(offline_env, tmp_path, uri):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    env = {k: v for k, v in offline_env.items() if k != "MLFLOW_ALLOW_FILE_STORE"}
    result = run_cli(*TINY_SPLIT, cwd=tmp_path, env=env | {"MLFLOW_TRACKING_URI": uri.format(tmp=tmp_path)})
    assert result.returncode == 2 and result.seconds < 30 and "Traceback" not in result.stderr
    assert "Cannot use the MLflow tracking store" in result.stderr and "MLFLOW_TRACKING_URI" in result.stderr
    assert "Epoch" not in result.stdout


def test_damaged_tfds_files_fail_the_run_with_a_clear_error(tiny_tfds, offline_env, tmp_path):
    import shutil

    damaged = tmp_path / "tfds"
    shutil.copytree(tiny_tfds, damaged)
    record = next((damaged / "rock_paper_scissors" / "3.0.0").glob("*-train.tfrecord*"))
    record.write_bytes(record.read_bytes()[: record.stat().st_size // 2])
    result = run_cli(*TINY_SPLIT, cwd=tmp_path, env=offline_env | {"TFDS_DATA_DIR": str(damaged)})
    assert result.returncode == 2 and "is damaged" in result.stderr and "Traceback" not in result.stderr
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FAILED"


def test_unwritable_feature_cache_fails_the_run_naming_the_knob(offline_env, tmp_path):
    (tmp_path / "blocker").write_text("a file")
    result = run_cli(*TINY_SPLIT, f"feature_cache.dir={tmp_path / 'blocker' / 'cache'}", cwd=tmp_path, env=offline_env)
    assert result.returncode == 2 and "feature_cache.dir" in result.stderr and "Traceback" not in result.stderr
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FAILED"


def test_deleted_experiment_is_explained_before_training(offline_env, tmp_path):
    client = store(tmp_path)
    client.delete_experiment(client.create_experiment("rps"))
    result = run_cli(*TINY_SPLIT, cwd=tmp_path, env=offline_env)
    assert result.returncode == 2 and "is deleted" in result.stderr and "Traceback" not in result.stderr
    assert "Epoch" not in result.stdout
