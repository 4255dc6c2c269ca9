"""What a researcher sees of a sweep in MLflow's UI, checked as the UI receives it (MLflow's REST
API, from a real `mlflow server`) and, where Chromium is installed, in a real headless browser:
the objective first, the parent's comparison of its children, the choice said and marked.

One tiny sweep (2 children, registered under one name) serves the whole module. With
``RPS_UI_SCREENSHOTS=<folder>`` the browser checks also save what they saw (the docs' pictures).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_SPLIT, all_runs, clean_env, free_port, run_cli, store, sweep_runs, wait_until_up
from support import mlflow_ui as ui
from support.services import require

pytestmark = pytest.mark.slow
OBJECTIVE, LOSS = "selection_val_accuracy", "selection_val_loss"
REGISTRY = "rps-ui-test"
EPOCH_ORDER = [OBJECTIVE, LOSS, "val_accuracy", "val_loss", "train_accuracy", "train_loss"]
SCREENSHOTS = os.environ.get("RPS_UI_SCREENSHOTS")


@pytest.fixture(scope="module")
def sweep(tiny_tfds, hub_cache, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("ui_sweep")
    env = clean_env() | {"TFDS_DATA_DIR": str(tiny_tfds), "TFHUB_CACHE_DIR": str(hub_cache)}
    result = run_cli("-m", "head.dropout=0.2,0.5", "epochs=2", *TINY_SPLIT, f"register_model={REGISTRY}", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = sweep_runs(cwd)
    chosen = next(c for c in children if c.info.run_id == parent.data.tags["best_run_id"])
    return SimpleNamespace(cwd=cwd, env=env, result=result, parent=parent, children=children, chosen=chosen)


@pytest.fixture(scope="module")
def server(sweep):
    """The sweep's store behind a real `mlflow server` (what the UI talks to)."""
    base = f"http://127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{sweep.cwd / 'mlruns' / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", base.rsplit(":", 1)[1], "--workers", "1"],
        cwd=sweep.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=clean_env() | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no GenAI job workers
    try:
        wait_until_up(f"{base}/health", process)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def api(base: str, path: str, **query) -> dict:
    with urllib.request.urlopen(f"{base}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}", timeout=10) as answer:
        return json.loads(answer.read())


def served_run(base: str, run_id: str) -> dict:
    run = api(base, "runs/get", run_id=run_id)["run"]
    return {"metrics": [m["key"] for m in run["data"]["metrics"]], "latest": {m["key"]: m for m in run["data"]["metrics"]},
            "tags": {t["key"]: t["value"] for t in run["data"].get("tags", [])}}


def model_id(run) -> str:
    return run.data.tags["rps.model_uri"].rsplit("/", 1)[-1]


def test_the_ui_receives_the_objective_first_and_diagnostics_last(server, sweep):
    for child in sweep.children:
        served = served_run(server, child.info.run_id)
        assert served["metrics"][:6] == EPOCH_ORDER, served["metrics"]  # Compare's and the tables' first columns
        assert served["metrics"][-1].startswith("timing_")
        history = api(server, "metrics/get-history", run_id=child.info.run_id, metric_key=OBJECTIVE)["metrics"]
        assert [m["step"] for m in history] == [1, 2, 3]  # as it stood after each epoch, then the final value
        assert served["latest"][OBJECTIVE]["step"] == 3
        assert served["latest"][OBJECTIVE]["value"] == pytest.approx(child.data.metrics[OBJECTIVE])
        assert served["latest"]["test_accuracy"]["step"] == 0  # a single value: drawn as a bar
        model = api(server, f"logged-models/{model_id(child)}")["model"]
        keys = [m["key"] for m in model["data"]["metrics"]]
        assert keys[:2] == [OBJECTIVE, LOSS] and len(keys) == len(set(keys)), keys  # the Models tab's first column
        assert "test_accuracy" in keys and not {"val_accuracy", "train_loss"} & set(keys) and not any(
            k.startswith("timing_") for k in keys)  # the final values, not the per-epoch ones
        values = {m["key"]: m["value"] for m in model["data"]["metrics"]}
        assert values[OBJECTIVE] == pytest.approx(child.data.metrics[OBJECTIVE])


def test_the_parent_the_children_and_the_choice_are_marked(server, sweep):
    parent = served_run(server, sweep.parent.info.run_id)
    children = {c.info.run_id: served_run(server, c.info.run_id) for c in sweep.children}
    colors = [parent["tags"]["mlflow.runColor"]] + [c["tags"]["mlflow.runColor"] for c in children.values()]
    assert re.fullmatch(r"#[0-9a-f]{6}", colors[0]) and len(set(colors)) == len(colors)  # the parent stands out
    for key in ("mlflow.user", "mlflow.source.name", "mlflow.source.type"):  # the UI's "Created by" and "Source"
        assert parent["tags"][key] and parent["tags"][key] == next(iter(children.values()))["tags"][key], key
    chosen = sweep.chosen.info.run_id
    assert {i: c["tags"].get("rps.chosen_by") for i, c in children.items()} == {
        i: (sweep.parent.info.run_id if i == chosen else None) for i in children}
    for child in sweep.children:
        model = api(server, f"logged-models/{model_id(child)}")["model"]["info"]
        assert model["name"] == child.info.run_name.replace(".", "_").replace(" ", "-")  # its swept values, once
        tags = {t["key"]: t["value"] for t in model.get("tags", [])}
        assert tags.get("rps.chosen_by") == (sweep.parent.info.run_id if child.info.run_id == chosen else None)
    alias = f"best-sweep-{sweep.parent.info.run_id[:8]}"
    version = api(server, "registered-models/alias", name=REGISTRY, alias=alias)["model_version"]
    assert version["run_id"] == chosen


def test_the_parent_compares_its_children_and_says_what_it_chose(sweep, tmp_path):
    client = store(sweep.cwd)
    parent = sweep.parent.info.run_id
    assert list(sweep.parent.data.metrics)[0] == OBJECTIVE  # the chosen child's, first
    local = Path(client.download_artifacts(parent, "summary", str(tmp_path)))
    with Image.open(local / "comparison.png") as sheet:
        sheet.verify()
        assert sheet.size[0] > 1000 and sheet.size[1] > 300
    assert any(a.path.startswith("images/sweep_comparison+step+0+") for a in client.list_artifacts(parent, "images"))
    ranked = sorted(sorted(sweep.children, key=lambda c: c.info.start_time),
                    key=lambda c: (-c.data.metrics[OBJECTIVE], c.data.metrics[LOSS], c.data.metrics["epochs_trained"]))
    table = list(csv.DictReader(io.StringIO((local / "per_class_accuracy.csv").read_text())))
    assert [row["run_id"] for row in table] == [c.info.run_id for c in ranked]
    assert [row["chosen"] for row in table] == ["yes", ""]
    for row, child in zip(table, ranked):  # each class's share of its test images the child got right
        record = json.loads(Path(client.download_artifacts(child.info.run_id, "eval/test_predictions.json",
                                                           str(tmp_path / child.info.run_id))).read_text())
        labels, predicted = np.array(record["labels"]), np.array(record["predicted"])
        for c, name in enumerate(record["class_names"]):
            assert float(row[f"test_accuracy_{name}"]) == pytest.approx(np.mean(predicted[labels == c] == c))
    words = (local / "summary.md").read_text()
    for where in (words, sweep.result.stdout):
        assert f"Chosen: {sweep.chosen.info.run_name} (run {sweep.chosen.info.run_id}), {OBJECTIVE} " in where
        assert f"Runner-up: {ranked[1].info.run_name}, {OBJECTIVE} " in where
        assert "on validation only: the test split was not looked at" in where
        assert f"Its model: models:/{REGISTRY}@best-sweep-{parent[:8]}" in where
        assert f"Rerun it alone, with its model: {sweep.chosen.data.tags['rps.rerun']}" in where


def test_the_chosen_childs_rerun_command_trains_it_again(sweep, tmp_path):
    command = shlex.split(sweep.chosen.data.tags["rps.rerun"])
    assert command[:3] == ["python", "-m", "rps.run"] and "head.dropout=" + sweep.chosen.data.params["head.dropout"] in command
    result = run_cli(*command[3:], cwd=tmp_path, env=sweep.env)
    assert result.returncode == 0, result.stderr[-3000:]
    (again,) = all_runs(tmp_path)
    assert again.data.metrics[OBJECTIVE] == pytest.approx(sweep.chosen.data.metrics[OBJECTIVE], abs=1e-6)
    assert again.data.metrics["test_loss"] == pytest.approx(sweep.chosen.data.metrics["test_loss"], abs=1e-6)
    assert again.data.params == sweep.chosen.data.params
    assert again.data.tags["rps.model_uri"].startswith("models:/")


def test_compare_opens_on_the_objective_in_a_browser(server, sweep):
    require("chromium", ui.missing)
    with ui.browser_page() as page:
        axes = ui.compare_axes(page, server, sweep.parent.info.experiment_id, [c.info.run_id for c in sweep.children])
        if SCREENSHOTS:
            page.screenshot(path=str(Path(SCREENSHOTS) / "ui-compare.png"))
    assert axes == ["head.dropout", OBJECTIVE]  # the swept value against the objective, nothing else


def test_the_chart_view_shows_the_childrens_images_side_by_side_in_a_browser(server, sweep):
    require("chromium", ui.missing)
    with ui.browser_page() as page:
        ui.chart_view(page, server, sweep.parent.info.experiment_id)
        ui.show_card(page, "sweep_comparison")
        sheet = ui.visible_images(page, "sweep_comparison")
        assert len(sheet) == 1, "the parent's comparison sheet is an image of the chart view"
        assert ui.preview_image(page, "sweep_comparison")["width"] > 800, "a click shows it at full size"
        if SCREENSHOTS:
            page.screenshot(path=str(Path(SCREENSHOTS) / "ui-sheet.jpg"), quality=70)  # photos: JPEG is 4x smaller
        ui.close_preview(page)
        ui.show_card(page, "confusion_matrix")
        ui.hide_run_params(page, "confusion_matrix")
        in_card = ui.visible_images(page, "confusion_matrix")
        assert in_card and in_card[0]["visible"] == 1.0, in_card  # not pushed out of its card by text
        shown = ui.fullscreen_images(page, "confusion_matrix")
        if SCREENSHOTS:
            page.screenshot(path=str(Path(SCREENSHOTS) / "ui-images.png"))
    assert len(shown) == len(sweep.children) and len({round(s["y"]) for s in shown}) == 1, shown  # one row
    assert all(s["width"] >= 200 and s["y"] < ui.VIEWPORT["height"] / 2 for s in shown), shown
