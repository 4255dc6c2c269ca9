"""What a run records to be rerun, the champion rule, the logged config read back, and the new
knobs' checks: in-process, no TensorFlow, a real git and a real SQLite store where they matter."""

from __future__ import annotations

import subprocess
from importlib import metadata

import mlflow
import pytest
from omegaconf import OmegaConf

from conftest import compose
from rps.common.errors import ConfigError
from rps.config import validate
from rps.config.logged import logged_config
from rps.search.config import search_checks
from rps.tracking import provenance
from rps.tracking.champion import Candidate, decide
from rps.training.outcome import OBJECTIVE


def git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repo(tmp_path):
    """A git checkout with one commit: code, a config, and a tracked file that looks like a secret."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    git(root, "config", "user.email", "t@example.com")
    git(root, "config", "user.name", "t")
    (root / "code.py").write_text("LR = 0.001\n")
    (root / "conf").mkdir()
    (root / "conf" / ".env").write_text("TOKEN=old\n")
    (root / "db_password.txt").write_text("old\n")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "init")
    return root


# --------------------------------------------------------------------------- the package lock


def test_the_lock_lists_every_installed_distribution_and_reads_back():
    packages = provenance.installed_packages()
    assert packages["tensorflow"] == metadata.version("tensorflow")
    assert packages["mlflow"] == metadata.version("mlflow") and packages["rps"] == metadata.version("rps")
    assert len(packages) == len({d.metadata["Name"].lower().replace("_", "-") for d in metadata.distributions()})
    text = provenance.lock_text(packages)
    assert f"tf-keras=={metadata.version('tf-keras')}\n" in text and text.startswith("# ")
    assert provenance.parse_lock(text) == packages
    changed = packages | {"numpy": "0.0.1"}
    assert provenance.lock_digest(changed) != provenance.lock_digest(packages)


def test_differences_name_each_changed_package_and_the_machine():
    recorded = provenance.Environment({"numpy": "2.0.0", "gone": "1.0"}, "3.11.2", "CPU A", "yes", "2", "abc", "clean")
    current = provenance.Environment({"numpy": "2.1.0", "new": "0.1"}, "3.11.2", "CPU B", "yes", "2", "abc", "clean")
    assert provenance.differences(recorded, current) == [
        ("cpu", "CPU A", "CPU B"), ("package gone", "1.0", "(absent)"), ("package new", "(absent)", "0.1"),
        ("package numpy", "2.0.0", "2.1.0")]
    assert recorded.machine_keys() != current.machine_keys()
    assert provenance.differences(recorded, recorded) == []
    unrecorded = provenance.recorded_environment({"git_commit": "abc"}, None)
    assert ("packages", "(not recorded)", "2 installed") in provenance.differences(unrecorded, current)


# --------------------------------------------------------------------------- the uncommitted diff


def test_a_clean_checkout_has_an_empty_diff_and_no_checkout_none(repo, tmp_path):
    assert provenance.uncommitted_diff(repo) == ""
    assert provenance.diff_digest("") == provenance.CLEAN
    outside = tmp_path / "not_git"
    outside.mkdir()
    assert provenance.uncommitted_diff(outside) is None and provenance.diff_digest(None) is None


def test_the_diff_is_a_patch_of_tracked_files_without_secrets(repo, tmp_path):
    (repo / "code.py").write_text("LR = 0.01\n")
    (repo / "conf" / ".env").write_text("TOKEN=new-secret\n")
    (repo / "db_password.txt").write_text("hunter2\n")
    (repo / "untracked.py").write_text("print('never logged')\n")
    diff = provenance.uncommitted_diff(repo)
    assert "+LR = 0.01" in diff and "-LR = 0.001" in diff
    assert "new-secret" not in diff and "hunter2" not in diff and "never logged" not in diff
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    (tmp_path / "u.diff").write_text(diff)
    git(clone, "apply", str(tmp_path / "u.diff"))  # the logged diff recreates the run's code
    assert (clone / "code.py").read_text() == "LR = 0.01\n"


def test_a_run_from_a_dirty_checkout_logs_its_diff(repo, tmp_path, monkeypatch):
    """log_provenance into a real run (SQLite store): the lock, the diff of the dirty checkout, the tags."""
    from rps.tracking.reporter import MlflowReporter

    (repo / "code.py").write_text("LR = 0.5\n")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    client = mlflow.MlflowClient()
    run_id = client.create_run(client.create_experiment("e", artifact_location=str(tmp_path / "a"))).info.run_id
    provenance.log_provenance(MlflowReporter(run_id), compose(), root=repo)
    tags = client.get_run(run_id).data.tags
    diff = (tmp_path / "d.diff")
    diff.write_text(provenance.recorded_text(run_id, provenance.DIFF_ARTIFACT))
    assert "+LR = 0.5" in diff.read_text() and tags[provenance.DIFF_TAG] == provenance.diff_digest(diff.read_text())
    lock = provenance.recorded_text(run_id, provenance.LOCK_ARTIFACT)
    assert provenance.parse_lock(lock) == provenance.installed_packages()
    assert tags[provenance.LOCK_TAG] == provenance.lock_digest(provenance.installed_packages())
    assert tags[provenance.CPU_TAG] and tags[provenance.AVX512_TAG] in ("yes", "no") and int(tags[provenance.CORES_TAG]) >= 1
    assert len(tags[provenance.BACKBONE_TAG]) == 64
    git(repo, "checkout", "code.py")
    clean = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id
    provenance.log_provenance(MlflowReporter(clean), compose(), root=repo)
    assert client.get_run(clean).data.tags[provenance.DIFF_TAG] == provenance.CLEAN
    assert provenance.recorded_text(clean, provenance.DIFF_ARTIFACT) is None


# --------------------------------------------------------------------------- the champion rule


HOLDER = Candidate("holder", 0.90, "split-a", "3")


@pytest.mark.parametrize("new, force, promoted, why", [
    (Candidate("new", 0.95, "split-a"), False, True, "beats version 3's 0.9000 on the same split"),
    (Candidate("new", 0.90, "split-a"), False, False, "does not beat"),  # a tie keeps the holder
    (Candidate("new", 0.80, "split-a"), False, False, "does not beat"),
    (Candidate("new", 0.99, "split-b"), False, False, "another split"),
    (Candidate("new", 0.99, None), False, False, "another split"),
    (Candidate("new", None, "split-a"), False, False, "no validation objective"),
    (Candidate("new", 0.80, "split-a"), True, True, "forced (champion.force=true), although"),
    (Candidate("new", 0.99, "split-b"), True, True, "forced"),
    (Candidate("holder", 0.90, "split-a"), True, False, "already holds"),
])
def test_the_alias_moves_only_to_a_better_model_on_the_same_split_or_when_forced(new, force, promoted, why):
    decision = decide(new, HOLDER, force)
    assert decision.promote is promoted and why in decision.reason


def test_the_first_model_takes_a_free_alias():
    assert decide(Candidate("new", 0.1, "split-a"), None, False).promote


# --------------------------------------------------------------------------- the logged config and the new knobs


def test_a_logged_config_reads_back_as_the_same_checked_config():
    cfg = compose("split=official", "head.dropout=0.2", "export.formats=[int8]", "champion.enabled=true")
    back = logged_config(OmegaConf.to_yaml(cfg, resolve=True))
    validate(back)
    assert OmegaConf.to_container(back) == OmegaConf.to_container(cfg)
    assert OmegaConf.get_type(back.dataset).__name__ == "TfdsDatasetConfig"


def test_a_config_logged_before_export_formats_migrates_and_a_foreign_one_is_refused():
    old = OmegaConf.to_container(compose())
    del old["champion"], old["export"]["formats"]
    old["export"] |= {"tflite": True, "tflite_quantize": True}
    back = logged_config(OmegaConf.to_yaml(old))
    validate(back)
    assert list(back.export.formats) == ["float32", "dynamic_range"] and back.export.tflite is None
    with pytest.raises(ConfigError, match="does not fit this version of rps"):
        logged_config(OmegaConf.to_yaml(old | {"epochs": "two"}))


@pytest.mark.parametrize("override, key, fix", [
    ("export.tflite=true", "export.tflite", "export.formats=[float32]"),
    ("export.tflite_quantize=true", "export.tflite_quantize", "export.formats=[float32,dynamic_range]"),
    ("export.formats=[float64]", "export.formats", "float32, float16, dynamic_range, int8"),
    ("export.formats=[int8,int8]", "export.formats", "distinct"),
    ("export.latency_runs=0", "export.latency_runs", ">= 1"),
    ("champion.alias='no spaces'", "champion.alias", "an MLflow alias"),
])
def test_replaced_or_wrong_export_and_champion_knobs_name_the_fix(override, key, fix):
    with pytest.raises(ConfigError) as err:
        validate(compose(override, "champion.enabled=false"))
    assert f"{key}=" in str(err.value) and fix in str(err.value)


def _search(*objectives: str, pruner: str = "none", refit: bool = False):
    cfg = OmegaConf.create({"search": {"trials": 1, "sampler": "tpe", "pruner": pruner, "startup_trials": 0,
                                       "warmup_epochs": 0, "space": {}, "objectives": list(objectives)},
                            "split": {"refit": refit}})
    return {key: ok for key, ok, _ in search_checks(cfg)}


def test_a_study_trades_the_validation_objective_against_latency_or_size_only():
    assert all(_search(OBJECTIVE, "export/int8/latency_ms").values())
    assert all(_search(OBJECTIVE, "export/float16/size_bytes").values())
    assert all(_search(OBJECTIVE, pruner="median").values())
    assert not _search("export/int8/latency_ms", OBJECTIVE)["search.objectives"]  # validation comes first
    assert not _search(OBJECTIVE, "test_accuracy")["search.objectives"]  # never the test split
    assert not _search(OBJECTIVE, "export/int4/latency_ms")["search.objectives"]
    assert not _search(OBJECTIVE, "export/int8/latency_ms", pruner="median")["search.pruner"]
    assert not _search(OBJECTIVE, refit=True)["split.refit"]  # a refit has no validation to choose on


# --------------------------------------------------------------------------- judging a rerun's metrics


ORIGINAL = {OBJECTIVE: 0.95, "test_accuracy": 0.9, "test_loss": 0.3, "export/int8/test_accuracy": 0.88,
            "export/int8/latency_ms": 2.0, "timing/feature_load_seconds": 0.1, "export/saved_model/size_bytes": 100.0,
            "val_loss": float("nan")}


def test_a_rerun_on_the_same_machine_must_match_bit_for_bit():
    from rps.runner.reproduce import compare

    same = compare(ORIGINAL, dict(ORIGINAL, **{"export/int8/latency_ms": 9.0, "export/saved_model/size_bytes": 98.0}),
                   exact=True, tolerance=0.01)
    assert [r.metric for r in same] == sorted([OBJECTIVE, "test_accuracy", "test_loss", "export/int8/test_accuracy",
                                               "val_loss"])  # timings, latency and SavedModel size not compared
    assert all(r.ok for r in same)
    off = compare(ORIGINAL, dict(ORIGINAL, test_loss=0.3 + 1e-12), exact=True, tolerance=0.01)
    assert [r.metric for r in off if not r.ok] == ["test_loss"]
    missing = {k: v for k, v in ORIGINAL.items() if k != "test_accuracy"}
    assert [r.metric for r in compare(ORIGINAL, missing, exact=True, tolerance=0.01) if r.ok is False] == ["test_accuracy"]


def test_elsewhere_only_the_accuracies_are_judged_within_the_tolerance():
    from rps.runner.reproduce import compare

    rerun = dict(ORIGINAL, **{OBJECTIVE: 0.955, "test_accuracy": 0.88, "test_loss": 0.9})
    rows = {r.metric: r.ok for r in compare(ORIGINAL, rerun, exact=False, tolerance=0.01)}
    assert rows[OBJECTIVE] is True and rows["test_accuracy"] is False  # 0.005 within, 0.02 not
    assert rows["test_loss"] is None and rows["export/int8/test_accuracy"] is True  # losses shown, not judged
