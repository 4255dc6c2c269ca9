"""Pre-flight checks of dataset and backbone: clear errors, in seconds, without TensorFlow work."""

import hashlib
import time

import pytest

from conftest import compose
from rps.model.hub import check_backbone, hub_cache_path
from rps.data import sources
from rps.data.sources import locate_tfds, scan_image_folder
from rps.config import DEFAULT_HANDLE
from rps.common.errors import ResourceError


@pytest.fixture
def no_network(monkeypatch):
    """Make every reachability probe fail, as on a machine without internet."""
    monkeypatch.setattr(sources, "can_reach", lambda url, timeout=3.0: False)


def test_prepared_tfds_is_found_with_sizes_and_class_names(tiny_tfds, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tiny_tfds))
    source = locate_tfds(compose().dataset)
    assert (source.n_train, source.n_test, source.version) == (60, 24, "3.0.0")
    assert source.class_names == ["rock", "paper", "scissors"]
    assert source.prepared and source.data_dir == str(tiny_tfds)


def test_dataset_data_dir_overrides_the_environment(tiny_tfds, tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    source = locate_tfds(compose(f"dataset.data_dir={tiny_tfds}").dataset)
    assert source.data_dir == str(tiny_tfds)


def test_missing_dataset_offline_names_tfds_data_dir(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(ResourceError) as err:
        locate_tfds(compose().dataset)
    assert time.monotonic() - start < 2
    assert "TFDS_DATA_DIR" in str(err.value) and str(tmp_path) in str(err.value)
    assert not any(tmp_path.iterdir()), "a failed pre-flight must not leave partial downloads"


def test_missing_version_is_not_found(tiny_tfds, monkeypatch, no_network):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tiny_tfds))
    with pytest.raises(ResourceError, match="rock_paper_scissors/9.9.9"):
        locate_tfds(compose("dataset.version=9.9.9").dataset)


def test_cached_hub_handle_passes(hub_cache, monkeypatch, no_network):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(hub_cache))
    check_backbone(DEFAULT_HANDLE)


def test_hub_cache_path_is_sha1_of_the_handle(tmp_path, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    assert hub_cache_path(DEFAULT_HANDLE) == tmp_path / hashlib.sha1(DEFAULT_HANDLE.encode()).hexdigest()
    assert hub_cache_path(DEFAULT_HANDLE).name == "145bb06ec3b59b08fb564ab752bd5aa222bfb50a"


def test_uncached_hub_handle_offline_names_tfhub_cache_dir(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    (tmp_path / hub_cache_path(DEFAULT_HANDLE).name).mkdir()  # empty: hub would re-download
    with pytest.raises(ResourceError) as err:
        check_backbone(DEFAULT_HANDLE)
    assert "TFHUB_CACHE_DIR" in str(err.value) and "145bb06ec3b59b08fb564ab752bd5aa222bfb50a" in str(err.value)


def test_local_handle_must_exist_and_be_a_saved_model(tiny_backbone, tmp_path):
    check_backbone(str(tiny_backbone))
    with pytest.raises(ResourceError, match="does not exist"):
        check_backbone(str(tmp_path / "nope"))
    with pytest.raises(ResourceError, match="not a SavedModel"):
        check_backbone(str(tmp_path))


def test_image_folder_is_listed_with_sorted_class_names(tmp_path):
    from rps.synthetic import write_image_folder

    write_image_folder(tmp_path / "hands", per_class=4)
    write_image_folder(tmp_path / "held_out", per_class=2, seed=1)
    cfg = compose("dataset=image_folder", f"dataset.path={tmp_path / 'hands'}",
                  f"dataset.test_path={tmp_path / 'held_out'}").dataset
    source = scan_image_folder(cfg)
    assert source.class_names == ["paper", "rock", "scissors"]
    assert (source.n_train, source.n_test) == (12, 6)
    assert all(source.class_names[y] in path for path, y in source.train_files + source.test_files)


@pytest.mark.parametrize("layout, message", [
    ({}, "does not exist"),
    ({"rock": 2}, "at least 2"),
    ({"rock": 2, "paper": 0}, "at least 2"),
])
def test_unusable_image_folders_are_explained(tmp_path, layout, message):
    from rps.synthetic import tiny_image
    from PIL import Image
    import numpy as np

    root = tmp_path / "data"
    for name, count in layout.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(tiny_image(0, np.random.default_rng(i))).save(root / name / f"{i}.png")
    if layout:
        root.mkdir(exist_ok=True)
    with pytest.raises(ResourceError, match=message) as err:
        scan_image_folder(compose("dataset=image_folder", f"dataset.path={root}").dataset)
    assert "dataset.path" in str(err.value)
