"""Using the trained model: predict CLI, Model Registry, TFLite export (tiny data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_SPLIT, all_runs, free_port, run_cli, store, wait_until_up

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported_run(tiny_tfds, hub_cache, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("exported")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TFDS_", "TFHUB_"))}
    env.update(TFDS_DATA_DIR=str(tiny_tfds), TFHUB_CACHE_DIR=str(hub_cache))
    result = run_cli("epochs=2", *TINY_SPLIT, "export.formats=[float32,dynamic_range]", "export.latency_runs=3",
                     "register_model=rps-tiny", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = all_runs(cwd)
    return cwd, run, env


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Images of other sizes and formats (WebP and TIFF only Pillow decodes), and a corrupt one."""
    from rps.synthetic import tiny_image

    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(5)
    for i, (fmt, size) in enumerate([("png", 48), ("jpg", 300), ("webp", 100), ("bmp", 64), ("tiff", 80), ("png", 224)]):
        (folder / ("nested" if i == 5 else "")).mkdir(exist_ok=True)
        Image.fromarray(tiny_image(i % 3, rng, size)).save(folder / ("nested" if i == 5 else "") / f"img{i}.{fmt}")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return folder


def predict_cli(cwd, env, *args):
    return subprocess.run([sys.executable, "-m", "rps.predict", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_matches_the_model_in_process_and_skips_the_corrupt_file(exported_run, images, tmp_path):
    import mlflow

    from rps.inference.predict import load_image

    cwd, run, env = exported_run
    out = tmp_path / "out.json"
    result = predict_cli(cwd, env, f"runs:/{run.info.run_id}", str(images), "--output", str(out))
    assert result.returncode == 1, result.stderr[-2000:]  # one file failed
    assert "skipped" in result.stderr and "broken.jpg" in result.stderr and "Traceback" not in result.stderr
    assert "6 images in" in result.stderr and "images/s" in result.stderr and "engine: xnnpack" in result.stderr
    rows = json.loads(out.read_text())
    assert sorted(os.path.basename(r["file"]) for r in rows) == [f"img{i}.{f}" for i, f in
                                                                 enumerate(["png", "jpg", "webp", "bmp", "tiff", "png"])]
    store(cwd)
    model = mlflow.pyfunc.load_model(run.data.tags["rps.model_uri"])
    names = model.metadata.metadata["class_names"]
    for row in rows:
        probs = model.predict(load_image(row["file"], 224)[None])[0]
        np.testing.assert_allclose([row[f"p_{n}"] for n in names], probs, atol=1e-5)
        assert row["label"] == names[int(np.argmax(probs))] and row["confidence"] == pytest.approx(probs.max(), abs=1e-5)
    assert "label" in result.stdout and "img2.webp" in result.stdout


def test_saved_model_path_and_registry_uri_predict_the_same(exported_run, images, tmp_path):
    import mlflow

    cwd, run, env = exported_run
    store(cwd)
    downloaded = mlflow.artifacts.download_artifacts(run.data.tags["rps.model_uri"], dst_path=str(tmp_path / "m"))
    outputs = []
    for model in (f"runs:/{run.info.run_id}", downloaded, f"{downloaded}/artifacts/saved_model", "models:/rps-tiny/1"):
        out = tmp_path / f"{len(outputs)}.csv"
        result = predict_cli(cwd, env, model, str(images / "img0.png"), str(images / "nested"), "--output", str(out))
        assert result.returncode == 0, result.stderr[-2000:]
        outputs.append(out.read_text().splitlines())
    assert outputs[0] == outputs[1] == outputs[2] == outputs[3] and len(outputs[0]) == 3
    version = mlflow.MlflowClient().get_model_version("rps-tiny", "1")
    assert version.run_id == run.info.run_id
    assert version.description.startswith("# Model card: rps-tiny version 1")  # every registered version has one
    assert "Chosen by: register_model=rps-tiny" in version.description


def test_unusable_model_or_inputs_exit_2(exported_run, images, tmp_path):
    cwd, run, env = exported_run
    assert predict_cli(cwd, env, str(tmp_path), str(tmp_path)).returncode == 2  # no images
    (tmp_path / "x.png").write_bytes(b"")
    missing = predict_cli(cwd, env, "runs:/0123456789abcdef/model", str(tmp_path / "x.png"))
    assert missing.returncode == 2 and "Could not load the MLflow model" in missing.stderr
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "saved_model.pb").write_bytes(b"not a protobuf")
    (damaged / "rps_model.json").write_text('{"class_names": ["a", "b"], "image_size": 224}')
    broken = predict_cli(cwd, env, str(damaged), str(images))
    assert broken.returncode == 2 and "cannot be loaded as a SavedModel" in broken.stderr
    assert "Traceback" not in broken.stderr
    model = f"runs:/{run.info.run_id}"
    assert predict_cli(cwd, env, model, str(images), "--batch-size", "0").returncode == 2
    no_folder = predict_cli(cwd, env, model, str(images), "--output", str(tmp_path / "nope" / "o.csv"))
    assert no_folder.returncode == 2 and "does not exist" in no_folder.stderr


def test_tflite_export_matches_the_saved_model(exported_run, tmp_path):
    import mlflow
    import tensorflow as tf

    from rps.model.lite import LiteModel

    cwd, run, env = exported_run
    metrics, tags = run.data.metrics, run.data.tags
    for name in ("float32", "dynamic_range"):
        assert abs(metrics[f"export/{name}/test_accuracy"] - metrics["test_accuracy"]) <= 0.005
        assert tags[f"export.{name}.within_tolerance"] == "true"
    client = store(cwd)
    tflite = client.download_artifacts(run.info.run_id, "export/model_float32.tflite", str(tmp_path))
    model = mlflow.artifacts.download_artifacts(run.data.tags["rps.model_uri"], dst_path=str(tmp_path / "m"))
    saved = tf.saved_model.load(f"{model}/artifacts/saved_model")
    x = np.random.default_rng(0).random((6, 224, 224, 3)).astype(np.float32)
    lite = LiteModel(open(tflite, "rb").read())(x)
    np.testing.assert_allclose(lite, saved(x).numpy(), atol=1e-5)
    assert np.array_equal(lite.argmax(1), saved(x).numpy().argmax(1))


def test_served_model_answers_a_posted_photo_like_the_predict_cli(exported_run, images, tmp_path):
    """`mlflow models serve` on the logged model: a PNG and a JPEG posted as base64 get the
    probabilities rps.predict gives for the same files."""
    import base64
    import signal
    import urllib.request

    cwd, run, env = exported_run
    files = [images / "img0.png", images / "img1.jpg"]
    out = tmp_path / "cli.json"
    assert predict_cli(cwd, env, f"runs:/{run.info.run_id}", *map(str, files), "--output", str(out)).returncode == 0
    expected = [[row[f"p_{name}"] for name in ("rock", "paper", "scissors")] for row in json.loads(out.read_text())]
    port = free_port()
    serve_env = env | {"MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", run.data.tags["rps.model_uri"],
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], cwd=cwd, env=serve_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server)
        body = {"dataframe_split": {"columns": ["image"],
                                    "data": [[base64.b64encode(f.read_bytes()).decode()] for f in files]}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            served = json.loads(response.read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    np.testing.assert_allclose(served, expected, atol=1e-5)
