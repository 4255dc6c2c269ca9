"""A logged model is checked against the manifest its run recorded before anything in it runs.

Tampering is done as an attacker with write access to the artifact store would: straight on the
files of the local store (mlruns/artifacts/models/<id>/artifacts/), never through rps.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import TINY_SPLIT, all_runs, clean_env, free_port, run_cli, store
from support.commands import run_module

MANIFEST_TAG = "rps.model_manifest_sha256"
# Appended to the logged model's python file: it would leave this marker if it ever ran.
PAYLOAD = "\nimport pathlib; pathlib.Path({marker!r}).write_text('the tampered model ran')\n"


# --------------------------------------------------------------------------- the manifest itself (in-process)


def _model_folder(root: Path) -> Path:
    (root / "artifacts" / "saved_model" / "variables").mkdir(parents=True)
    (root / "MLmodel").write_text("python_function: {}\n")
    (root / "mlflow_model.py").write_text("print('model')\n")
    (root / "artifacts" / "saved_model" / "saved_model.pb").write_bytes(b"graph")
    (root / "artifacts" / "saved_model" / "variables" / "variables.index").write_bytes(b"index")
    return root


def test_a_manifest_names_every_changed_added_or_missing_file(tmp_path):
    from rps.common.errors import IntegrityError
    from rps.inference.manifest import MANIFEST_FILE, verify, write_manifest

    folder = _model_folder(tmp_path / "m")
    digest = write_manifest(folder)
    assert digest == hashlib.sha256((folder / MANIFEST_FILE).read_bytes()).hexdigest()
    assert sorted(json.loads((folder / MANIFEST_FILE).read_text())["files"]) == [
        "MLmodel", "artifacts/saved_model/saved_model.pb", "artifacts/saved_model/variables/variables.index",
        "mlflow_model.py"]
    verify(folder, digest, "the model")
    (folder / "registered_model_meta").write_text("model_name: x\n")  # what MLflow adds when it downloads
    verify(folder, digest, "the model")
    changes = {
        "changed: mlflow_model.py": lambda copy: (copy / "mlflow_model.py").write_text("import os\n"),
        "added: code.py": lambda copy: (copy / "code.py").write_text("x"),
        "missing: artifacts/saved_model/variables/variables.index":
            lambda copy: (copy / "artifacts/saved_model/variables/variables.index").unlink(),
        "added: artifacts/linked": lambda copy: os.symlink("/etc", copy / "artifacts" / "linked"),
    }
    for i, (expected, change) in enumerate(changes.items()):
        copy = shutil.copytree(folder, tmp_path / f"copy{i}")
        change(copy)
        with pytest.raises(IntegrityError, match=expected):
            verify(copy, digest, "the model")
    (folder / MANIFEST_FILE).write_bytes((folder / MANIFEST_FILE).read_bytes().replace(b"format", b"Format"))
    with pytest.raises(IntegrityError, match=f"its {MANIFEST_FILE} is not the one its run recorded"):
        verify(folder, digest, "the model")


# --------------------------------------------------------------------------- logged models (real runs)


@pytest.fixture(scope="module")
def logged(tiny_tfds, hub_cache, tmp_path_factory):
    """One tiny run whose model is logged and registered (rps-tiny/1) in a local store."""
    cwd = tmp_path_factory.mktemp("logged")
    env = clean_env()
    env.update(TFDS_DATA_DIR=str(tiny_tfds), TFHUB_CACHE_DIR=str(hub_cache))
    result = run_cli("epochs=1", *TINY_SPLIT, "register_model=rps-tiny", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = all_runs(cwd)
    photo = cwd / "hand.png"
    from PIL import Image
    import numpy as np

    from rps.synthetic import tiny_image

    Image.fromarray(tiny_image(0, np.random.default_rng(1))).save(photo)
    return cwd, run, env, photo


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


@pytest.mark.slow
def test_the_logged_model_carries_its_manifest_and_the_run_its_digest(logged, tmp_path):
    from rps.inference.manifest import MANIFEST_FILE, file_hashes

    cwd, run, env, _ = logged
    folder = _stored_model(cwd, run)
    content = (folder / MANIFEST_FILE).read_bytes()
    assert run.data.tags[MANIFEST_TAG] == hashlib.sha256(content).hexdigest()
    listed = json.loads(content)["files"]
    assert listed == file_hashes(folder)  # every file of the stored model, as stored
    assert {"MLmodel", "mlflow_model.py", "artifacts/saved_model/saved_model.pb",
            "code/rps/inference/classifier.py"} <= set(listed)


@pytest.mark.slow
@pytest.mark.parametrize("uri", ["runs", "registry"])
def test_predict_refuses_a_model_whose_python_file_was_changed_and_runs_nothing(logged, tmp_path, uri):
    cwd, run, env, photo = logged
    model = f"runs:/{run.info.run_id}" if uri == "runs" else "models:/rps-tiny/1"
    marker = tmp_path / "ran"
    with tampered(_stored_model(cwd, run) / "mlflow_model.py", _append(PAYLOAD.format(marker=str(marker)))):
        result = _cli("rps.predict", cwd, env, model, str(photo))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "changed: mlflow_model.py" in result.stderr and "Nothing in it was loaded or run" in result.stderr
    assert "hand.png" not in result.stdout and not marker.exists()


@pytest.mark.slow
def test_serve_refuses_a_changed_or_added_file_before_anything_starts(logged, tmp_path):
    """Served, the python file would run: it does not, and nothing listens on the port."""
    import socket

    cwd, run, env, _ = logged
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


@pytest.mark.slow
def test_a_model_without_a_recorded_digest_is_refused_unless_trusted(logged, tmp_path):
    """As a model logged before rps recorded manifests: the run has no digest tag."""
    import mlflow

    cwd, run, env, photo = logged
    client = store(cwd)
    client.delete_tag(run.info.run_id, MANIFEST_TAG)
    try:
        refused = _cli("rps.predict", cwd, env, f"runs:/{run.info.run_id}", str(photo))
        trusted = _cli("rps.predict", cwd, env, f"runs:/{run.info.run_id}", str(photo), "--trust-unverified")
    finally:
        client.set_tag(run.info.run_id, MANIFEST_TAG, run.data.tags[MANIFEST_TAG])
    assert refused.returncode == 2 and "recorded no manifest" in refused.stderr and "--trust-unverified" in refused.stderr
    assert trusted.returncode == 0 and "hand.png" in trusted.stdout, trusted.stderr[-2000:]
    # a version registered from other files than the model its run logged (a copy someone changed)
    copy = shutil.copytree(_stored_model(cwd, run), tmp_path / "copy")
    _append(PAYLOAD.format(marker=str(tmp_path / "ran")))(copy / "mlflow_model.py")
    other = mlflow.MlflowClient().create_model_version("rps-tiny", copy.as_uri(), run_id=run.info.run_id)
    swapped = _cli("rps.predict", cwd, env, f"models:/rps-tiny/{other.version}", str(photo))
    assert swapped.returncode == 2 and "but its run" in swapped.stderr and "Traceback" not in swapped.stderr
    assert not (tmp_path / "ran").exists()


@pytest.mark.slow
def test_a_local_folder_is_checked_against_the_manifest_it_carries(logged, tmp_path):
    import mlflow

    cwd, run, env, photo = logged
    store(cwd)
    folder = Path(mlflow.artifacts.download_artifacts(run.data.tags["rps.model_uri"], dst_path=str(tmp_path / "m")))
    (folder / "artifacts" / "saved_model" / "variables" / "variables.index").write_bytes(b"changed")
    for model in (folder, folder / "artifacts" / "saved_model"):
        result = _cli("rps.predict", cwd, env, str(model), str(photo))
        assert result.returncode == 2 and "changed: artifacts/saved_model/variables/variables.index" in result.stderr
