"""Using the trained model: predict CLI, Model Registry, TFLite export, serving, and the check of its
files against the manifest its run recorded (tiny data, one run for the whole module)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_SPLIT, all_runs, clean_env, copy_store, free_port, run_cli, store, wait_until_up
from support.commands import run_module, start_module

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported_run(tiny_tfds, hub_cache, store_template, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("exported")
    copy_store(store_template, cwd)
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
    (tmp_path / "m").mkdir()  # a copy: loaded from the store's own folder, MLflow adds its registered_model_meta there
    model = mlflow.pyfunc.load_model(run.data.tags["rps.model_uri"], dst_path=str(tmp_path / "m"))
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
    HTTP 400 naming the item in one line, and the server's memory does not move (MLflow's scoring
    server: real processes rps.serve starts, whether rps.serve itself is forked warm or not)."""
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
    server = start_module("rps.serve", f"runs:/{run.info.run_id}", "--port", str(port), cwd=cwd, env=unactivated)
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


MEASURED_PREDICT = '''
"""`python -m rps.predict <args>`, then its peak resident memory (VmHWM, MB) written to the file first in argv."""
import runpy
import sys
from pathlib import Path

peak = Path(sys.argv.pop(1))
try:
    runpy.run_module("rps.predict", run_name="__main__", alter_sys=True)
finally:
    status = Path("/proc/self/status").read_text().splitlines()
    peak.write_text(str(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024))
'''


def test_a_decompression_bomb_is_refused_by_name_and_costs_no_memory(exported_run, images, tmp_path):
    """A 48 KB PNG declaring 20000x20000 pixels among photos: named and skipped, the others
    classified, the process's peak memory that of the same command without it; --max-pixels
    lowers the limit. Both commands are forked from the same warm server: a forked child's peak
    (VmHWM) starts at its resident memory at the fork, the same for both, so the two peaks differ
    by what each command added (a decoded bomb: 1.2 GB)."""
    from rps.synthetic import bomb_png

    cwd, run, env = exported_run
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("img0.png", "img1.jpg"):  # 48x48 and 300x300 pixels
        (folder / name).write_bytes((images / name).read_bytes())
    (tmp_path / "measured_predict.py").write_text(MEASURED_PREDICT)

    def measured(*args: str) -> tuple[subprocess.CompletedProcess, float]:
        peak = tmp_path / "peak"
        result = run_module("measured_predict", str(peak), f"runs:/{run.info.run_id}", str(folder), *args, cwd=cwd,
                            env=env, path=[tmp_path])
        assert peak.exists(), result.stderr[-3000:]
        return result, float(peak.read_text())

    plain, plain_peak = measured()
    assert plain.returncode == 0, plain.stderr[-2000:]
    (folder / "bomb.png").write_bytes(bomb_png())
    bombed, bombed_peak = measured("--max-pixels", "50000")
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
    every decode at once (ThreadPoolExecutor.map) piled them up, ~0.6 MB each: +463 MB here. The
    script reads its own peak (VmHWM) after each count; forked warm, that peak starts at the
    child's resident memory at the fork, below both readings, so their difference is still the 1,000 files'."""
    import mlflow

    cwd, run, env = exported_run
    store(cwd)
    model = mlflow.artifacts.download_artifacts(run.data.tags["rps.model_uri"], dst_path=str(tmp_path / "m"))
    (tmp_path / "images").mkdir()
    (tmp_path / "slow_model.py").write_text(SLOW_MODEL)
    out = run_module("slow_model", model, str(tmp_path / "images"), cwd=cwd, env=env, path=[tmp_path])
    assert out.returncode == 0, out.stderr[-3000:]
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    assert peaks["1000"] - peaks["100"] < 100, peaks


# --------------------------------------------------------------------------- a logged model is checked before it runs
# The model above, checked against the manifest its run recorded (tests/test_integrity.py checks the
# manifest itself). Tampering is done as an attacker with write access to the artifact store would:
# straight on the files of the local store (mlruns/artifacts/models/<id>/artifacts/), never through
# rps, and put back after each test. Last in this file: nothing after them reads a tampered store.

MANIFEST_TAG = "rps.model_manifest_sha256"
# Appended to the logged model's python file: it would leave this marker if it ever ran.
PAYLOAD = "\nimport pathlib; pathlib.Path({marker!r}).write_text('the tampered model ran')\n"


def _stored_model(cwd: Path, run) -> Path:
    """The logged model's folder in the local artifact store."""
    model_id = run.data.tags["rps.model_uri"].rsplit("/", 1)[-1]
    return cwd / "mlruns" / "artifacts" / "models" / model_id / "artifacts"


@contextmanager
def tampered(path: Path, change):
    """``change(path)`` for the block, then the file put back as it was (or removed if it was new)."""
    before = path.read_bytes() if path.exists() else None
    change(path)
    try:
        yield
    finally:
        if before is None:
            path.unlink()
        else:
            path.write_bytes(before)


def _cli(module: str, cwd: Path, env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_module(module, *args, cwd=cwd, env=env, timeout=timeout)


def _append(text: str):
    return lambda path: path.write_text(path.read_text() + text)


def test_the_logged_model_carries_its_manifest_and_the_run_its_digest(exported_run):
    from rps.inference.manifest import MANIFEST_FILE, file_hashes

    cwd, run, env = exported_run
    folder = _stored_model(cwd, run)
    content = (folder / MANIFEST_FILE).read_bytes()
    assert run.data.tags[MANIFEST_TAG] == hashlib.sha256(content).hexdigest()
    listed = json.loads(content)["files"]
    assert listed == file_hashes(folder)  # every file of the stored model, as stored
    assert {"MLmodel", "mlflow_model.py", "artifacts/saved_model/saved_model.pb",
            "code/rps/inference/classifier.py"} <= set(listed)


@pytest.mark.parametrize("uri", ["runs", "registry"])
def test_predict_refuses_a_model_whose_python_file_was_changed_and_runs_nothing(exported_run, images, tmp_path, uri):
    cwd, run, env = exported_run
    photo = images / "img0.png"
    model = f"runs:/{run.info.run_id}" if uri == "runs" else "models:/rps-tiny/1"
    marker = tmp_path / "ran"
    with tampered(_stored_model(cwd, run) / "mlflow_model.py", _append(PAYLOAD.format(marker=str(marker)))):
        result = _cli("rps.predict", cwd, env, model, str(photo))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "changed: mlflow_model.py" in result.stderr and "Nothing in it was loaded or run" in result.stderr
    assert photo.name not in result.stdout and not marker.exists()


def test_serve_refuses_a_changed_or_added_file_before_anything_starts(exported_run, tmp_path):
    """Served, the python file would run: it does not, and nothing listens on the port."""
    import socket

    cwd, run, env = exported_run
    folder, marker, port = _stored_model(cwd, run), tmp_path / "ran", free_port()
    with tampered(folder / "mlflow_model.py", _append(PAYLOAD.format(marker=str(marker)))):
        result = _cli("rps.serve", cwd, env, f"runs:/{run.info.run_id}", "--port", str(port))
    assert result.returncode == 2 and "changed: mlflow_model.py" in result.stderr, result.stderr[-2000:]
    with tampered(folder / "artifacts" / "saved_model" / "assets.py", lambda p: p.write_text("x")):
        added = _cli("rps.serve", cwd, env, "models:/rps-tiny/1", "--port", str(port))
    assert added.returncode == 2 and "added: artifacts/saved_model/assets.py" in added.stderr, added.stderr[-2000:]
    time.sleep(1)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "no server was started"
    assert not marker.exists() and "Traceback" not in result.stderr + added.stderr


def test_a_model_without_a_recorded_digest_is_refused_unless_trusted(exported_run, images, tmp_path):
    """As a model logged before rps recorded manifests: the run has no digest tag."""
    import mlflow

    cwd, run, env = exported_run
    photo = images / "img0.png"
    client = store(cwd)
    client.delete_tag(run.info.run_id, MANIFEST_TAG)
    try:
        refused = _cli("rps.predict", cwd, env, f"runs:/{run.info.run_id}", str(photo))
        trusted = _cli("rps.predict", cwd, env, f"runs:/{run.info.run_id}", str(photo), "--trust-unverified")
    finally:
        client.set_tag(run.info.run_id, MANIFEST_TAG, run.data.tags[MANIFEST_TAG])
    assert refused.returncode == 2 and "recorded no manifest" in refused.stderr and "--trust-unverified" in refused.stderr
    assert trusted.returncode == 0 and photo.name in trusted.stdout, trusted.stderr[-2000:]
    # a version registered from other files than the model its run logged (a copy someone changed)
    copy = shutil.copytree(_stored_model(cwd, run), tmp_path / "copy")
    _append(PAYLOAD.format(marker=str(tmp_path / "ran")))(copy / "mlflow_model.py")
    other = mlflow.MlflowClient().create_model_version("rps-tiny", copy.as_uri(), run_id=run.info.run_id)
    try:
        swapped = _cli("rps.predict", cwd, env, f"models:/rps-tiny/{other.version}", str(photo))
    finally:
        mlflow.MlflowClient().delete_model_version("rps-tiny", other.version)
    assert swapped.returncode == 2 and "but its run" in swapped.stderr and "Traceback" not in swapped.stderr
    assert not (tmp_path / "ran").exists()


def test_a_local_folder_is_checked_against_the_manifest_it_carries(exported_run, images, tmp_path):
    import mlflow

    cwd, run, env = exported_run
    store(cwd)
    folder = Path(mlflow.artifacts.download_artifacts(run.data.tags["rps.model_uri"], dst_path=str(tmp_path / "m")))
    (folder / "artifacts" / "saved_model" / "variables" / "variables.index").write_bytes(b"changed")
    for model in (folder, folder / "artifacts" / "saved_model"):
        result = _cli("rps.predict", cwd, env, str(model), str(images / "img0.png"))
        assert result.returncode == 2 and "changed: artifacts/saved_model/variables/variables.index" in result.stderr
