"""Shared fixtures: generated tiny data and backbone, Hydra composition, CLI runner, store reader."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import rps  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from rps.config import DEFAULT_HANDLE, compose, register_configs  # noqa: F401  (compose: tests import it from here)
from rps.search.config import register_tune_configs
from support.commands import clean_env, run_module  # noqa: F401  (clean_env: tests import it from here)

ROOT = Path(__file__).resolve().parent.parent
SHARED_OFFLINE = ROOT.parent / "shared" / "offline"
TINY_SPLIT = ["split.val_size=12", "split.test_size=12", "batch_size=16"]

register_configs()
register_tune_configs()  # conf/tune.yaml's schemas, for tests that compose a study in-process


# pytest-xdist hands test files to its workers in collection order (pyproject.toml turns off its
# own order, by count of tests): the longest files go first, so the files that start last are short
# and no worker ends alone on a long one (the SLURM file, 2 tests, ~100 s, did: it started last).
# Ordered by worker time per file, setup + call, in the CI dry run of 2026-12-03 19:10 (--durations=0,
# docs/testing.md); the files not named keep their order, after these. A schedule only: no test
# depends on it, and a file missing from here only starts later.
LONGEST_FIRST = ("test_team_server.py", "test_finetune_cache.py", "test_tune.py", "test_cluster.py", "test_e2e.py",
                 "test_resume.py", "test_slurm.py", "test_bench.py", "test_bench_finetune.py", "test_mirrors.py",
                 "test_ui.py", "test_bench_main_command.py", "test_sweep.py", "test_predict.py", "test_ship.py",
                 "test_ensemble.py", "test_features.py", "test_refit.py", "test_finetune.py", "test_quiet.py",
                 "test_selection.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's tests in their order


@pytest.fixture(scope="session", autouse=True)
def private_feature_cache(tmp_path_factory):
    """Keep the tests' feature cache (and runs they launch) out of the user's ~/.cache."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))


@pytest.fixture(scope="session")
def tiny_tfds(tmp_path_factory) -> Path:
    """A TFDS data dir with a prepared tiny rock_paper_scissors/3.0.0 (60 train, 24 test)."""
    from rps.synthetic import prepare_tiny_tfds

    data_dir = tmp_path_factory.mktemp("tfds")
    prepare_tiny_tfds(data_dir)
    return data_dir


@pytest.fixture(scope="session")
def relabelled_tfds(tmp_path_factory) -> Path:
    """The tiny dataset with every test image labelled as the next class: test accuracy collapses,
    nothing else changes (choices that look only at validation must not move)."""
    from rps.synthetic import prepare_tiny_tfds

    data_dir = tmp_path_factory.mktemp("relabelled")
    prepare_tiny_tfds(data_dir, test_label_shift=1)
    return data_dir


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    from rps.synthetic import save_tiny_backbone

    return save_tiny_backbone(tmp_path_factory.mktemp("backbone") / "tiny")


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory, tiny_backbone) -> Path:
    """A TF Hub cache holding the tiny backbone under the default MobileNet-V2 handle."""
    from rps.synthetic import install_in_hub_cache

    cache = tmp_path_factory.mktemp("hub")
    install_in_hub_cache(tiny_backbone, cache, DEFAULT_HANDLE)
    return cache


@pytest.fixture
def rps_signal_handlers():
    """rps's SIGINT/SIGTERM handlers, installed as its entry points install them (pytest-xdist
    workers started from a background shell ignore SIGINT), and the worker's put back after."""
    import signal

    from rps.common.errors import interrupt_on_signals

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupt_on_signals()
    yield
    for s, handler in before.items():
        signal.signal(s, handler)


@pytest.fixture(scope="session")
def store_template(tmp_path_factory) -> Path:
    """A tracking store holding MLflow's tables and their schema version, no rows. A new store's
    migrations take 1-2 s of CPU, ~15% of a tiny forked run (py-spy, 2026-12-04), so the tests
    that take :func:`offline_env`, and the fixtures that run sweeps and studies, start from a copy
    (:func:`copy_store`). The first run opening the copy adds MLflow's Default experiment as in a
    new store (same rows and ids, checked 2026-12-04). A store's first use (rps's lock and its
    message; concurrent first runs) is tested where runs start in a folder without one (test_e2e)."""
    import sqlite3

    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("store_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    connection = sqlite3.connect(db)
    with connection:  # one transaction
        connection.execute("DELETE FROM experiment_tags")
        connection.execute("DELETE FROM experiments")
    connection.close()
    return db


def copy_store(template: Path, cwd: Path) -> None:
    """``template`` as the default store of runs launched from ``cwd`` (sqlite's backup: a consistent copy)."""
    import sqlite3

    (cwd / "mlruns").mkdir(parents=True, exist_ok=True)
    source, target = sqlite3.connect(template), sqlite3.connect(cwd / "mlruns" / "mlflow.db")
    source.backup(target)
    source.close(), target.close()


@pytest.fixture
def offline_env(tiny_tfds, hub_cache, tmp_path, store_template) -> dict[str, str]:
    """Environment for a CLI run on the tiny mirrors; runs launched from ``tmp_path`` find an empty
    tracking store there (a copy of :func:`store_template`)."""
    copy_store(store_template, tmp_path)
    env = clean_env()
    env.update(TFDS_DATA_DIR=str(tiny_tfds), TFHUB_CACHE_DIR=str(hub_cache), PYTHONUNBUFFERED="1")
    return env


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run_cli(*overrides: str, cwd: Path, env: dict[str, str], timeout: float = 600, cold: bool = False) -> CliResult:
    """`python -m rps.run <overrides>` launched from ``cwd`` (forked warm unless ``cold``: support.commands)."""
    start = time.monotonic()
    proc = run_module("rps.run", *overrides, cwd=cwd, env=env, timeout=timeout, cold=cold)
    return CliResult(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def peak_rss_mb(pids: list[int]) -> float:
    """The highest VmHWM (peak resident memory) among live processes ``pids``, in MB."""
    peaks = []
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        peaks += [int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")]
    return max(peaks, default=0.0)


def descendants(pid: int) -> list[int]:
    """The live processes started (directly or not) by ``pid``."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def prepared_run(cfg, **changes):
    """A :class:`rps.training.pipeline.Prepared` for ``cfg`` (with ``changes`` merged in), as a run sees it."""
    from omegaconf import OmegaConf

    from rps.training.pipeline import prepare

    return prepare(OmegaConf.merge(cfg, changes) if changes else cfg)


def assert_a_refit_on_every_training_example(report, out) -> None:
    """A fine-tuning refit of TINY_SPLIT (``split.refit=true``, 1 head epoch, 2 fine-tuning epochs):
    no validation split, both phases on all 72 training examples, no objective, a test accuracy."""
    params = report.recorded["params"]
    assert params["data.n_val"] == 0 and params["data.n_train"] == 72, "the pool of 84 less its 12 test examples"
    assert [m["phase"] for _, m in report.epochs] == [1, 2, 2] and "val_accuracy" not in out.history
    assert out.objective is None and 0 <= out.metrics["test_accuracy"] <= 1


def split_examples(train, test, split_cfg, seed: int) -> dict:
    """The examples of each split, exactly as a run with this split config and seed takes them."""
    from rps.data.examples import concat
    from rps.data.splits import split_indices, split_sizes

    sizes = split_sizes(split_cfg, len(train), len(test))
    pool = concat(train, test)
    return {name: pool.take(i) for name, i in split_indices(len(train), len(test), split_cfg.kind, sizes, seed).items()}


def store(cwd: Path):
    """An MlflowClient on the default store a run launched from ``cwd`` writes."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")
    return mlflow.MlflowClient()


def new_experiment(cwd: Path, name: str) -> str:
    """An experiment in ``cwd``'s default store whose artifacts go beside it, where rps puts them
    (``mlruns/artifacts``; MLflow's own default is the test process's working directory)."""
    return store(cwd).create_experiment(name, artifact_location=(cwd / "mlruns" / "artifacts").as_uri())


def free_port() -> int:
    """A loopback port nothing listens on (for servers the tests start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    """Poll ``url`` until it answers; fail if ``process`` (its server) exits or time runs out."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            assert time.monotonic() < deadline and process.poll() is None, f"{url} did not come up"
            time.sleep(1)


def sweep_runs(cwd: Path):
    """The one sweep parent in the store of ``cwd`` and its children (nothing else may be there)."""
    runs = all_runs(cwd)
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(runs) == 1 + len(children)
    return parents[0], children


def all_runs(cwd: Path):
    client = store(cwd)
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments]) if experiments else []
