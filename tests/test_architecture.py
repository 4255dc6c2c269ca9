"""The package's shape is its architecture (docs/architecture.md): these tests keep it so.

Imports between packages only go down the layers below; only rps.tracking writes to MLflow; the
installed package holds no benchmark or test code; every declared command starts.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import sysconfig
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "rps"
# package -> the packages it may import (besides itself); top-level modules (the commands and
# rps.synthetic) may import anything.
ALLOWED = {
    "common": set(),
    "data": {"common"},
    "model": {"common", "data"},
    "config": {"common", "model"},
    "training": {"common", "data", "model"},
    "inference": {"common", "data", "model"},
    "tracking": {"common", "data", "model", "training", "inference"},
    "runner": {"common", "config", "training", "tracking"},
    "search": {"common", "config", "runner", "training", "tracking"},
    "team": {"common", "tracking"},
}
# MLflow calls that change a tracking store (runs, experiments, models, the registry).
MLFLOW_WRITES = {
    "start_run", "end_run", "create_run", "delete_run", "restore_run", "update_run", "set_terminated",
    "create_experiment", "delete_experiment", "restore_experiment", "rename_experiment", "set_experiment_tag",
    "log_metric", "log_metrics", "log_param", "log_params", "log_batch", "log_inputs", "log_input", "log_outputs",
    "set_tag", "set_tags", "delete_tag", "log_artifact", "log_artifacts", "log_text", "log_dict", "log_figure",
    "log_image", "log_table", "log_model", "register_model", "create_registered_model", "create_model_version",
    "set_registered_model_alias", "delete_registered_model_alias", "update_model_version", "set_model_version_tag",
    "set_registered_model_tag", "create_logged_model", "finalize_logged_model", "set_logged_model_tags",
    "log_model_params", "transition_model_version_stage",
}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def _package(path: Path) -> str | None:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else None


def _imported_packages(tree: ast.AST) -> set[str]:
    """The rps sub-packages a module imports (at any depth: module level or inside functions)."""
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "rps" else [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found |= {name.split(".")[1] for name in names if name.startswith("rps.") and name.split(".")[1] in ALLOWED}
    return found


def test_packages_import_only_the_layers_below_them():
    wrong = []
    for path, tree in _modules():
        package = _package(path)
        if package is None:
            continue
        assert package in ALLOWED, f"rps/{package}/ is a package docs/architecture.md and ALLOWED do not know"
        for other in _imported_packages(tree) - {package} - ALLOWED[package]:
            wrong.append(f"{path.relative_to(ROOT)} imports rps.{other}")
    assert not wrong, "\n".join(wrong)


def test_the_architecture_page_describes_every_package():
    page = (ROOT / "docs" / "architecture.md").read_text()
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(ALLOWED)
    for package in packages:
        assert f"rps/{package}/" in page, f"docs/architecture.md says nothing of rps/{package}/"


def _receiver_root(node: ast.AST) -> str:
    while isinstance(node, (ast.Attribute, ast.Call)):
        node = node.value if isinstance(node, ast.Attribute) else node.func
    return node.id if isinstance(node, ast.Name) else ""


def test_only_the_tracking_package_writes_to_mlflow():
    """Calls of MLflow's writing API on ``mlflow...`` or on a client, anywhere but rps/tracking/."""
    wrong = []
    for path, tree in _modules():
        if _package(path) == "tracking":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MLFLOW_WRITES:
                root = _receiver_root(node.func.value)
                chain = ast.unparse(node.func.value)
                if root == "mlflow" or chain.endswith("client"):
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node.func)}")
    assert not wrong, "MLflow writes outside rps/tracking/:\n" + "\n".join(wrong)


def test_the_writing_check_finds_a_write(tmp_path):
    """The check above can fail: it sees a client write in a module outside rps/tracking/."""
    tree = ast.parse("import mlflow\nclient = mlflow.MlflowClient()\nclient.log_batch('r', metrics=[])\n"
                     "mlflow.start_run()\nself.client.set_tag('r', 'k', 'v')\n")
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr in MLFLOW_WRITES]
    assert [ast.unparse(c.func) for c in calls] == ["client.log_batch", "mlflow.start_run", "self.client.set_tag"]
    assert all(_receiver_root(c.func.value) == "mlflow" or ast.unparse(c.func.value).endswith("client") for c in calls)


def test_the_wheel_holds_the_package_and_nothing_else(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(tmp_path)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("rps-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"rps", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    assert "rps/run.py" in names and "rps/training/pipeline.py" in names
    assert not [n for n in names if "bench" in n or "conftest" in n or n.startswith("tests/") or "/testing" in n]


COMMANDS = ("rps-run", "rps-tune", "rps-predict", "rps-serve", "rps-compare", "rps-recover", "rps-server",
            "rps-reproduce")


@pytest.mark.slow
def test_every_declared_command_answers_help():
    scripts = Path(sysconfig.get_path("scripts"))

    def helped(command: str) -> tuple[str, subprocess.CompletedProcess]:
        return command, subprocess.run([str(scripts / command), "--help"], capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(3) as pool:
        for command, out in pool.map(helped, COMMANDS):
            assert out.returncode == 0, (command, out.stderr[-2000:])
            assert "usage" in out.stdout.lower() or "powered by hydra" in out.stdout.lower(), (command, out.stdout[:500])
