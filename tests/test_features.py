"""Feature cache: keyed on exactly what determines features, verified, atomic, shared safely."""

import multiprocessing as mp

import numpy as np
import pytest

import rps  # noqa: F401
from conftest import TINY_SPLIT, compose, prepared_run
from rps.data.pipelines import make_dataset
from rps.model import features
from rps.data.examples import Examples
from support.feature_builders import build_shared, counting_compute


def _key(images, labels, backbone, size=224, engine="xnnpack"):
    digest = features.backbone_digest("https://example.org/h", backbone)
    return features.cache_key(Examples(np.array(images, dtype=object), np.array(labels)).digest(), digest, size, engine)


def test_key_depends_on_images_labels_backbone_files_size_and_engine(tmp_path):
    backbone = tmp_path / "bb"
    backbone.mkdir()
    (backbone / "saved_model.pb").write_bytes(b"graph")
    base = _key([b"a", b"b"], [0, 1], backbone)
    assert base == _key([b"a", b"b"], [0, 1], backbone)
    assert base != _key([b"a", b"c"], [0, 1], backbone)
    assert base != _key([b"a", b"b"], [1, 0], backbone)
    assert base != _key([b"a", b"b"], [0, 1], backbone, size=160)
    assert base != _key([b"a", b"b"], [0, 1], backbone, engine="tf")
    (backbone / "saved_model.pb").write_bytes(b"other weights")
    assert base != _key([b"a", b"b"], [0, 1], backbone)
    remote = features.backbone_digest("gs://bucket/model", None)  # not local: keyed by the handle
    assert remote == features.backbone_digest("gs://bucket/model", tmp_path / "absent")
    assert remote != features.backbone_digest("gs://bucket/other", None)


def test_image_folder_examples_are_keyed_by_path_size_and_mtime(tmp_path):
    import os

    image = tmp_path / "a.png"
    image.write_bytes(b"png bytes")

    def key():
        return features.cache_key(Examples(np.array([str(image)], dtype=object), np.array([0]), True).digest(),
                                  "bb", 224, "tf")

    before = key()
    os.utime(image, ns=(0, 10**9))
    assert key() != before, "a touched file is another example"
    same_mtime = key()
    image.write_bytes(b"png bytes")  # same size ...
    os.utime(image, ns=(0, 10**9))  # ... and mtime: the key cannot tell (documented)
    assert key() == same_mtime


def test_build_then_hit(tmp_path):
    labels = np.array([0, 1, 2, 0, 1, 2])
    compute = counting_compute(tmp_path / "calls")
    first = features.cached_features("k", labels, 4, compute, tmp_path / "cache")
    second = features.cached_features("k", labels, 4, compute, tmp_path / "cache")
    assert (first.status, second.status) == ("built", "hit")
    assert np.array_equal(first.features, second.features)
    assert (tmp_path / "calls").read_text() == "x"
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip_byte", "wrong_labels"])
def test_damaged_entry_is_detected_logged_and_rebuilt(tmp_path, damage, caplog):
    labels = np.array([0, 1, 2, 0, 1, 2])
    compute = counting_compute(tmp_path / "calls")
    built = features.cached_features("k", labels, 4, compute, tmp_path)
    data = built.path.read_bytes()
    if damage == "truncate":
        built.path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        built.path.write_bytes(b"not a cache entry")
    elif damage == "flip_byte":
        payload = data.find(np.arange(24, dtype=np.float32).tobytes())
        built.path.write_bytes(data[:payload + 8] + bytes([data[payload + 8] ^ 0xFF]) + data[payload + 9:])
    else:
        labels = np.array([2, 1, 0, 0, 1, 2])
    rebuilt = features.cached_features("k", labels, 4, compute, tmp_path)
    assert rebuilt.status == "rebuilt"
    assert "damaged" in caplog.text
    assert np.array_equal(rebuilt.features, built.features)
    assert features.read_entry(rebuilt.path, labels, 4).shape == (6, 4)


def test_parallel_builders_compute_once_and_agree(tmp_path):
    with mp.get_context("spawn").Pool(4) as pool:
        results = pool.map(build_shared, [(tmp_path / "cache", tmp_path / "calls", i) for i in range(4)])
    assert sorted(s for s, _ in results) == ["built", "hit", "hit", "hit"]
    assert len({total for _, total in results}) == 1
    assert (tmp_path / "calls").read_text() == "x"


@pytest.fixture(scope="module")
def tiny_cfg(tiny_tfds, tiny_backbone):
    return compose(f"dataset.data_dir={tiny_tfds}", f"backbone.handle={tiny_backbone}", *TINY_SPLIT,
                   "epochs=3", "backbone.image_size=32")


@pytest.fixture(scope="module")
def sequences(tiny_cfg, tmp_path_factory):
    """Two sequences of three runs in this process, as a sweep on the basic launcher or a study
    runs them: with the cache, A = tiny_cfg (builds the entry), B = another seed, dropout and lr,
    C = A again (a hit); without it, D, E, F alike. Per run: its outcome and Reporter; A also
    keeps its full model's probabilities on the test images, taken right after it ran."""
    from rps.training.pipeline import train_and_evaluate
    from rps.training.report import Reporter

    cache_dir = str(tmp_path_factory.mktemp("features"))
    other = {"seed": 2, "head": {"dropout": 0.1}, "optimizer": {"lr": 0.05}}
    runs, full = {}, None
    for cached, names in ((True, "ABC"), (False, "DEF")):
        for name, changes in zip(names, ({}, other, {})):
            report = Reporter()
            out = train_and_evaluate(prepared_run(tiny_cfg, feature_cache={"dir": cache_dir, "enabled": cached},
                                                  **changes), report)
            runs[name] = (out, report)
            if name == "A":  # before the next run frees this one's Keras session
                images = np.concatenate([x for x, _ in make_dataset(out.test_examples, 32, 64, 3).as_numpy_iterator()])
                full = out.classifier(images, training=False).numpy()
    return runs, full


def test_full_model_equals_head_on_cached_features(sequences):
    runs, full = sequences
    (built, report), (_, again) = runs["A"], runs["C"]
    assert report.recorded["tags"]["feature_cache"] == "built"
    np.testing.assert_allclose(full, built.probs, atol=1e-5)
    assert again.recorded["tags"]["feature_cache"] == "hit"
    assert "timing_feature_extraction_seconds" not in again.recorded["metrics"]  # nothing was extracted
    assert 0 < again.recorded["metrics"]["timing_feature_load_seconds"] < report.recorded["metrics"][
        "timing_feature_extraction_seconds"]


def test_cached_and_uncached_training_agree(sequences):
    runs, _ = sequences
    assert runs["D"][1].recorded["tags"]["feature_cache"] == "off: feature_cache.enabled=false"
    cached, uncached = runs["A"][0].metrics, runs["D"][0].metrics
    assert abs(cached["test_accuracy"] - uncached["test_accuracy"]) <= 0.1
    assert cached["test_loss"] == pytest.approx(uncached["test_loss"], rel=0.05)


@pytest.mark.parametrize("cache", [True, False])
def test_a_run_in_a_long_lived_process_does_not_depend_on_the_runs_before_it(sequences, cache):
    """Sweeps on the basic launcher and studies run many runs in one process, freeing memory
    (Keras' session included) between them: a run repeated after another gives the same result."""
    runs, _ = sequences
    first, other, again = (runs[name][0] for name in ("ABC" if cache else "DEF"))
    assert first.metrics == again.metrics
    np.testing.assert_array_equal(first.probs, again.probs)
    assert not np.array_equal(first.probs, other.probs), "a different run differs: the comparison can fail"


def test_augmentation_turns_the_cache_off_and_never_touches_evaluation(tiny_cfg, tmp_path):
    from omegaconf import OmegaConf

    from rps.common.errors import ConfigError
    from rps.config import validate
    from rps.training.pipeline import train_and_evaluate
    from rps.training.report import Reporter

    cfg = OmegaConf.merge(tiny_cfg, {"augment": compose("augment=basic").augment}, {"feature_cache": {"dir": str(tmp_path)}})
    report = Reporter()
    out = train_and_evaluate(prepared_run(cfg), report)
    assert report.recorded["tags"]["feature_cache"] == "off: training images are augmented (augment=basic)"
    assert not list(tmp_path.glob("*.npz"))
    clean = np.concatenate([x for x, _ in make_dataset(out.test_examples, 32, 64, 3).as_numpy_iterator()])
    np.testing.assert_allclose(out.classifier(clean, training=False).numpy(), out.probs, atol=1e-5)
    with pytest.raises(ConfigError, match="feature_cache.enabled=True"):
        validate(OmegaConf.merge(cfg, {"feature_cache": {"enabled": True}}))  # before any run starts


def test_unwritable_cache_costs_the_entry_not_the_run(tmp_path, monkeypatch):
    labels = np.array([0, 1, 2, 0, 1, 2])

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(features, "write_entry", disk_full)
    result = features.cached_features("k", labels, 4, counting_compute(tmp_path / "calls"), tmp_path / "cache")
    assert result.status == "built, not stored" and result.features.shape == (6, 4)
    assert not result.path.exists()
