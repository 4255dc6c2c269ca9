"""Using the trained model: predict CLI, Model Registry, TFLite export (tiny data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_SPLIT, all_runs, clean_env, free_port, run_cli, store, wait_until_up
from support.commands import run_module

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported_run(tiny_tfds, hub_cache, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("exported")
    env = clean_env()
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
    return run_module("rps.predict", *args, cwd=cwd, env=env)


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
    assert missing.returncode == 2 and "No run 0123456789abcdef" in missing.stderr
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
    from rps.model.formats import TOLERANCE

    assert abs(metrics["export/float32/test_accuracy"] - metrics["test_accuracy"]) <= 0.005  # float32: the same model
    for name in ("float32", "dynamic_range"):  # quantized weights may move an image of the 12 tiny test images
        gap = abs(metrics[f"export/{name}/test_accuracy"] - metrics["test_accuracy"])
        assert tags[f"export.{name}.within_tolerance"] == str(gap <= TOLERANCE[name]).lower()
    client = store(cwd)
    tflite = client.download_artifacts(run.info.run_id, "export/model_float32.tflite", str(tmp_path))
    model = mlflow.artifacts.download_artifacts(run.data.tags["rps.model_uri"], dst_path=str(tmp_path / "m"))
    saved = tf.saved_model.load(f"{model}/artifacts/saved_model")
    x = np.random.default_rng(0).random((6, 224, 224, 3)).astype(np.float32)
    lite = LiteModel(open(tflite, "rb").read())(x)
    np.testing.assert_allclose(lite, saved(x).numpy(), atol=1e-5)
    assert np.array_equal(lite.argmax(1), saved(x).numpy().argmax(1))


def _post(port: int, items: list[str]) -> tuple[int, dict]:
    """POST base64 images as MLflow's scoring server takes a column of them: (HTTP status, JSON body)."""
    import urllib.error
    import urllib.request

    body = {"dataframe_split": {"columns": ["image"], "data": [[item] for item in items]}}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_served_model_answers_photos_like_the_predict_cli_and_bad_items_with_one_line(exported_run, images, tmp_path):
    """`python -m rps.serve` from a venv that is not activated (its bin folder not on PATH): a PNG
    and a JPEG get the probabilities rps.predict gives; a decompression bomb and a non-image get
    HTTP 400 naming the item in one line, and the server's memory does not move."""
    import base64
    import signal

    from conftest import descendants, peak_rss_mb
    from rps.synthetic import bomb_png

    cwd, run, env = exported_run
    files = [images / "img0.png", images / "img1.jpg"]
    out = tmp_path / "cli.json"
    assert predict_cli(cwd, env, f"runs:/{run.info.run_id}", *map(str, files), "--output", str(out)).returncode == 0
    expected = [[row[f"p_{name}"] for name in ("rock", "paper", "scissors")] for row in json.loads(out.read_text())]
    port = free_port()
    unactivated = env | {"PATH": "/usr/bin:/bin"}
    server = subprocess.Popen([sys.executable, "-m", "rps.serve", f"runs:/{run.info.run_id}", "--port", str(port)],
                              cwd=cwd, env=unactivated, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server)
        photos = [base64.b64encode(f.read_bytes()).decode() for f in files]
        status, served = _post(port, photos)
        assert status == 200, served
        np.testing.assert_allclose(served["predictions"], expected, atol=1e-5)
        normal = peak_rss_mb(descendants(server.pid))
        bomb = _post(port, [photos[0], base64.b64encode(bomb_png()).decode()])
        not_image = _post(port, [base64.b64encode(b"not an image").decode()])
        assert bomb[0] == not_image[0] == 400, (bomb, not_image)
        assert bomb[1]["message"].startswith("input item 1: ") and "20000x20000" in bomb[1]["message"], bomb
        assert not_image[1]["message"].startswith("input item 0: not an image"), not_image
        for _, body in (bomb, not_image):
            assert body["error_code"] == "INVALID_PARAMETER_VALUE" and "\n" not in body["message"]
            assert "stack_trace" not in body and "Traceback" not in json.dumps(body)
        assert peak_rss_mb(descendants(server.pid)) < normal + 100, "the bomb was never decoded"
        assert _post(port, photos[:1])[0] == 200, "the server still answers"
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=60)
    assert server.returncode == 143 and "Traceback" not in stderr, stderr[-2000:]


def test_a_decompression_bomb_is_refused_by_name_and_costs_no_memory(exported_run, images, tmp_path):
    """A 48 KB PNG declaring 20000x20000 pixels among photos: named and skipped, the others
    classified, the process's peak memory that of the same command without it; --max-pixels
    lowers the limit."""
    from conftest import run_measured
    from rps.synthetic import bomb_png

    cwd, run, env = exported_run
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("img0.png", "img1.jpg"):  # 48x48 and 300x300 pixels
        (folder / name).write_bytes((images / name).read_bytes())
    command = [sys.executable, "-m", "rps.predict", f"runs:/{run.info.run_id}", str(folder)]
    plain, plain_peak = run_measured(command, cwd, env)
    assert plain.returncode == 0, plain.stderr[-2000:]
    (folder / "bomb.png").write_bytes(bomb_png())
    bombed, bombed_peak = run_measured(command + ["--max-pixels", "50000"], cwd, env)
    assert bombed.returncode == 1 and "Traceback" not in bombed.stderr, bombed.stderr[-2000:]
    assert "bomb.png is 20000x20000 pixels (400 Mpx), more than the limit of 0.05 Mpx" in bombed.stderr
    assert "img1.jpg is 300x300 pixels" in bombed.stderr and "2 of 3 file(s) failed" in bombed.stderr
    assert "img0.png" in bombed.stdout
    assert bombed_peak < plain_peak + 100, (plain_peak, bombed_peak)


SLOW_MODEL = '''
import json, sys, time
from pathlib import Path

import numpy as np
from PIL import Image

from rps.inference.predict import load_predictor, predictions


class Slow:
    """The real classifier, 0.1 s slower per batch (a big model's pace): decoding runs ahead of it."""

    def __init__(self, model):
        self.model, self.image_size, self.class_names = model, model.image_size, model.class_names

    def __call__(self, batch):
        time.sleep(0.1)
        return self.model(batch)


def peak_mb():
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


model, folder = Slow(load_predictor(Path(sys.argv[1]))), Path(sys.argv[2])
image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
peaks = {}
for count in (100, 1000):
    files = []
    for i in range(count):
        files.append(folder / f"{count}-{i}.png")
        Image.fromarray(image).save(files[-1])
    rows = sum(1 for _, row, _ in predictions(model, files, 32) if row)
    assert rows == count, rows
    peaks[count] = peak_mb()
print(json.dumps(peaks))
'''


def test_predicting_ten_times_more_files_takes_no_more_memory(exported_run, tmp_path):
    """A model slower than decoding (as the real backbone is): 1,000 files peak like 100. Submitting
    every decode at once (ThreadPoolExecutor.map) piled them up, ~0.6 MB each: +463 MB here."""
    import mlflow

    cwd, run, env = exported_run
    store(cwd)
    model = mlflow.artifacts.download_artifacts(run.data.tags["rps.model_uri"], dst_path=str(tmp_path / "m"))
    (tmp_path / "images").mkdir()
    out = subprocess.run([sys.executable, "-c", SLOW_MODEL, model, str(tmp_path / "images")], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    assert peaks["1000"] - peaks["100"] < 100, peaks
