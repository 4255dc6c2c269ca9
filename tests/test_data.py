"""Splitting and input pipelines: leak-free, deterministic, correctly scaled."""

import hashlib

import numpy as np
import pytest

import rps  # noqa: F401
from conftest import compose
from rps.data.pipelines import augmenter, make_dataset
from rps.data.examples import concat, load_image_folder, load_tfds
from rps.data.sources import locate_tfds, scan_image_folder
from rps.common.errors import DataError
from rps.data.splits import SplitSizes, split_indices, split_sizes


@pytest.fixture(scope="module")
def tiny_examples(tiny_tfds):
    source = locate_tfds(compose(f"dataset.data_dir={tiny_tfds}").dataset)
    train, test, names, version = load_tfds(source)
    return train, test, names


def split_examples(train, test, kind, sizes, seed):
    pool = concat(train, test)
    return {name: pool.take(i) for name, i in split_indices(len(train), len(test), kind, sizes, seed).items()}


def digests(ds) -> list[str]:
    """A hash per image of a batched (image, label) dataset, in iteration order."""
    return [hashlib.sha1(image.tobytes()).hexdigest() for images, _ in ds.as_numpy_iterator() for image in images]


def test_tfds_loading_keeps_every_example(tiny_examples):
    train, test, names = tiny_examples
    assert (len(train), len(test)) == (60, 24)
    assert names == ["rock", "paper", "scissors"]
    assert sorted(np.bincount(train.labels)) == [20, 20, 20]


def test_tutorial_split_is_disjoint_and_complete(tiny_examples):
    train, test, _ = tiny_examples
    sizes = SplitSizes(train=60, val=12, test=12)
    splits = split_examples(train, test, "tutorial", sizes, seed=3)
    assert {k: len(v) for k, v in splits.items()} == {"train": 60, "val": 12, "test": 12}
    keys = {k: {bytes(b) for b in v.images} for k, v in splits.items()}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    assert len(keys["train"] | keys["val"] | keys["test"]) == 84


def test_no_image_crosses_splits_across_two_epochs(tiny_examples):
    """The reference tutorial reshuffled on every pass; here membership never changes."""
    train, test, _ = tiny_examples
    sizes = split_sizes(compose("split.val_size=12", "split.test_size=12").split, 60, 24)
    splits = split_examples(train, test, "tutorial", sizes, seed=0)
    ds = {k: make_dataset(v, 32, 16, 3, shuffle_seed=0 if k == "train" else None) for k, v in splits.items()}
    epochs = [{k: digests(d.epochs(e, e + 1) if k == "train" else d) for k, d in ds.items()} for e in range(2)]
    for split in ("val", "test"):
        assert epochs[0][split] == epochs[1][split], "evaluation splits must be identical every epoch"
    assert epochs[0]["train"] != epochs[1]["train"], "training batches are reshuffled each epoch"
    seen_train = set(epochs[0]["train"]) | set(epochs[1]["train"])
    assert seen_train == set(epochs[0]["train"])
    assert not seen_train & set(epochs[0]["val"]) and not seen_train & set(epochs[0]["test"])
    assert not set(epochs[0]["val"]) & set(epochs[0]["test"])


def test_an_epochs_batches_depend_on_the_seed_and_the_epoch_only(tiny_examples):
    """What lets a resumed run train on exactly the batches an uninterrupted one would: epoch 2
    alone equals epoch 2 after epochs 0 and 1, and every epoch holds each example once."""
    train, _, _ = tiny_examples
    stream = make_dataset(train, 32, 16, 3, shuffle_seed=5)
    straight = digests(stream.epochs(0, 3))
    per_epoch = len(train)
    assert digests(stream.epochs(2, 3)) == straight[2 * per_epoch:]
    assert sorted(straight[:per_epoch]) == sorted(straight[per_epoch:2 * per_epoch]) != straight[:per_epoch]
    assert stream.steps == 4  # 60 examples in batches of 16
    assert digests(make_dataset(train, 32, 16, 3, shuffle_seed=6).epochs(0, 1)) != straight[:per_epoch]


def test_same_seed_same_split_other_seed_other_split(tiny_examples):
    train, test, _ = tiny_examples
    sizes = SplitSizes(train=60, val=12, test=12)
    a, b, c = (split_examples(train, test, "tutorial", sizes, seed=s) for s in (7, 7, 8))
    for k in ("train", "val", "test"):
        assert list(a[k].images) == list(b[k].images)
        assert np.array_equal(a[k].labels, b[k].labels)
    assert list(a["val"].images) != list(c["val"].images)


def test_official_split_keeps_the_dataset_test_set(tiny_examples):
    train, test, _ = tiny_examples
    splits = split_examples(train, test, "official", SplitSizes(train=54, val=6, test=24), seed=0)
    assert sorted(map(bytes, splits["test"].images)) == sorted(map(bytes, test.images))
    assert len(splits["train"]) == 54 and len(splits["val"]) == 6
    assert not {bytes(b) for b in splits["train"].images} & {bytes(b) for b in splits["val"].images}


def test_pipeline_scales_resizes_and_one_hot_encodes(tiny_examples):
    train, _, _ = tiny_examples
    images, labels = next(make_dataset(train, 40, 8, 3).as_numpy_iterator())
    assert images.shape == (8, 40, 40, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.max() > 0.5
    assert labels.shape == (8, 3) and np.array_equal(labels.argmax(1), train.labels[:8])


def test_image_folder_reports_corrupt_files_by_path(tmp_path):
    from rps.synthetic import write_image_folder

    root = write_image_folder(tmp_path / "hands", per_class=3)
    (root / "rock" / "truncated.png").write_bytes((root / "rock" / "000.png").read_bytes()[:60])
    (root / "paper" / "notes.jpg").write_text("not an image")
    cfg = compose("dataset=image_folder", f"dataset.path={root}").dataset
    source = scan_image_folder(cfg)
    with pytest.raises(DataError) as err:
        load_image_folder(source, skip_corrupt=False)
    assert "truncated.png" in str(err.value) and "notes.jpg" in str(err.value)
    assert "dataset.skip_corrupt=true" in str(err.value)
    train, test, skipped = load_image_folder(source, skip_corrupt=True)
    assert skipped == 2 and len(train) == 9 and len(test) == 0


def test_augmentation_changes_training_images_every_epoch(tiny_examples):
    train, _, _ = tiny_examples
    augment = augmenter(compose("augment=basic").augment, seed=0)
    plain = next(make_dataset(train, 48, 16, 3).as_numpy_iterator())[0]
    augmented = make_dataset(train, 48, 16, 3, augment=augment)
    first, second = (next(augmented.as_numpy_iterator())[0] for _ in range(2))
    assert first.shape == plain.shape and 0.0 <= first.min() and first.max() <= 1.0
    assert not np.allclose(first, plain) and not np.allclose(first, second)


def test_strong_augmentation_jitters_colour_in_training_only(tiny_examples):
    train, _, _ = tiny_examples
    augment = augmenter(compose("augment=strong").augment, seed=0)
    plain = next(make_dataset(train, 48, 16, 3).as_numpy_iterator())[0]
    jittered = augment(plain, training=True).numpy()
    assert jittered.shape == plain.shape
    mean_colour = lambda x: x.reshape(-1, 3).mean(0) / x.reshape(-1, 3).mean()  # noqa: E731 (hue balance)
    assert np.abs(mean_colour(jittered) - mean_colour(plain)).max() > 0.01, "colours change"
    np.testing.assert_array_equal(augment(plain, training=False).numpy(), plain)
