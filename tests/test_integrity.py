"""A logged model is checked against the manifest its run recorded before anything in it runs.

Here the manifest itself, in-process. The checks of a real logged and registered model (tampered
on the store's files, then put back) are at the end of tests/test_predict.py: they read its run
rather than train another.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest


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
