import os
import time

import numpy as np
import pytest
from PIL import Image

from triptych.data import digests
from triptych.data.sources import Examples, fingerprint, list_image_folder, load_cifar10, load_folder
from triptych.data.splits import make_splits, stratified_subset
from triptych.errors import TriptychError


def test_folder_loader_sorted_classes_and_labels(image_folder):
    source = load_folder(image_folder)
    assert source.class_names == ("cats", "dogs", "owls")
    assert len(source.train) == 60 and source.test is None
    assert np.bincount(source.train.labels).tolist() == [20, 20, 20]


def test_splits_are_stratified_disjoint_and_seeded(image_folder):
    source = load_folder(image_folder)
    a = make_splits(source, seed=3, val_fraction=0.25, test_fraction=0.25)
    b = make_splits(source, seed=3, val_fraction=0.25, test_fraction=0.25)
    c = make_splits(source, seed=4, val_fraction=0.25, test_fraction=0.25)
    ids = [set(s.ids) for s in (a.train, a.val, a.test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert sum(map(len, ids)) == 60
    assert np.bincount(a.test.labels).tolist() == [5, 5, 5]
    assert list(a.test.ids) == list(b.test.ids)
    assert list(a.test.ids) != list(c.test.ids)


def test_test_split_does_not_depend_on_training_subset(image_folder):
    source = load_folder(image_folder)
    full = make_splits(source, seed=0, val_fraction=0.2, test_fraction=0.25)
    small = make_splits(source, seed=0, val_fraction=0.2, test_fraction=0.25, train_per_class=5)
    assert list(full.test.ids) == list(small.test.ids)
    assert len(small.train) + len(small.val) == 15


def test_stratified_subset_takes_per_class():
    examples = Examples(labels=np.repeat([0, 1], 10), ids=np.arange(20).astype(str))
    subset = stratified_subset(examples, 3, seed=0)
    assert np.bincount(subset.labels).tolist() == [3, 3]


def test_cifar10_from_mirror(cifar_mirror, monkeypatch):
    monkeypatch.setenv("TRIPTYCH_MIRROR", str(cifar_mirror))
    source = load_cifar10()
    assert source.class_names[0] == "airplane" and len(source.class_names) == 10
    assert source.test is not None and "mirror" in source.origin


def test_cifar10_missing_everywhere_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIPTYCH_MIRROR", str(tmp_path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    import keras

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(TriptychError, match=r"CIFAR-10 not found: looked in .*cifar10.*TRIPTYCH_MIRROR"):
        load_cifar10()


def test_single_class_and_empty_class_are_clear_errors(tmp_path, image_folder):
    (tmp_path / "one" / "only").mkdir(parents=True)
    (tmp_path / "one" / "only" / "a.png").write_bytes((image_folder / "cats" / "0000.png").read_bytes())
    with pytest.raises(TriptychError, match="at least 2"):
        load_folder(tmp_path / "one")
    (image_folder / "empty").mkdir()
    with pytest.raises(TriptychError, match="empty: class folder holds no images"):
        load_folder(image_folder)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(TriptychError, match="does not exist"):
        load_folder(tmp_path / "nope")


def test_symlink_loop_does_not_hang(image_folder):
    (image_folder / "cats" / "loop").symlink_to(image_folder / "cats")
    paths, labels, _ = list_image_folder(image_folder)
    assert len(paths) == 60


@pytest.fixture
def digest_memo(tmp_path, monkeypatch):
    """A fresh digest memo in a temporary cache folder."""
    monkeypatch.setenv("TRIPTYCH_CACHE", str(tmp_path / "cache"))
    digests.clear_memo()
    yield tmp_path / "cache" / digests.MEMO_FILE
    digests.clear_memo()


def bmp_folder(root) -> Examples:
    """Two classes of two 8x8 BMPs (uncompressed: new pixels keep the file size), last changed an hour ago."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i}.bmp")
            os.utime(root / name / f"{i}.bmp", (time.time() - 3600,) * 2)
    return load_folder(root).train


def test_fingerprint_changes_with_content(image_folder, digest_memo):
    source = load_folder(image_folder)
    first = fingerprint(source.train)
    assert first == fingerprint(source.train)
    assert first != fingerprint(source.train.take(np.arange(10)))
    arrays = Examples(labels=np.zeros(2, np.int64), ids=np.array(["m/train/0", "m/train/1"]),
                      images=np.zeros((2, 4, 4, 3), np.uint8))
    edited = Examples(arrays.labels, arrays.ids, arrays.images.copy())
    edited.images[1, 2, 2, 0] = 1
    assert fingerprint(arrays) != fingerprint(edited)


def test_fingerprint_follows_pixels_not_name_size_or_mtime(tmp_path, digest_memo):
    train = bmp_folder(tmp_path / "bmp")
    before = fingerprint(train)
    path = tmp_path / "bmp" / "a" / "0.bmp"
    size = path.stat().st_size
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(path)  # same name, same size, new pixels
    assert path.stat().st_size == size
    edited = fingerprint(train)
    assert edited != before
    os.utime(tmp_path / "bmp" / "b" / "1.bmp")  # a new mtime alone is not a new picture
    assert fingerprint(train) == edited


def test_fingerprint_rerun_takes_digests_from_the_memo(tmp_path, digest_memo, monkeypatch):
    train = bmp_folder(tmp_path / "bmp")
    first = fingerprint(train)
    assert digest_memo.is_file()
    digests.clear_memo()  # as if in a new process
    monkeypatch.setattr(digests, "_sha256", lambda path: pytest.fail(f"hashed again: {path}"))
    assert fingerprint(train) == first


def test_pipeline_batches_resizes_keeps_order_and_shuffles_training(image_folder):
    import tensorflow as tf

    from triptych.data.pipeline import Augment, make_dataset
    from triptych.data.preprocessing import get_preprocessor

    source = load_folder(image_folder)
    ds = make_dataset(source.train, 3, 24, 8, get_preprocessor("torch"), training=False, seed=0)
    images, labels = next(iter(ds))
    assert images.shape == (8, 24, 24, 3) and labels.shape == (8, 3)
    assert images.dtype == tf.float32
    # torch mode: ImageNet mean/std normalisation, so values are roughly centred.
    assert -3 < float(tf.reduce_min(images)) and float(tf.reduce_max(images)) < 3
    ordered = np.concatenate([np.argmax(y, 1) for _, y in ds])
    np.testing.assert_array_equal(ordered, source.train.labels)
    train = make_dataset(
        source.train, 3, 24, 8, get_preprocessor("torch"), training=True, seed=0, augment=Augment(4, True)
    )
    shuffled = np.concatenate([np.argmax(y, 1) for _, y in train])
    assert sorted(shuffled.tolist()) == sorted(source.train.labels.tolist())
    assert shuffled.tolist() != source.train.labels.tolist()


def test_training_augments_anew_each_epoch_and_evaluation_is_deterministic():
    from triptych.data.pipeline import Augment, make_dataset

    pixels = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    # one image per class, so an image is found again by its label after shuffling
    examples = Examples(labels=np.arange(4), ids=np.array([f"m/train/{i}" for i in range(4)]), images=pixels)

    def epoch(dataset) -> np.ndarray:
        batches = list(dataset)
        images = np.concatenate([x.numpy() for x, _ in batches])
        labels = np.concatenate([np.argmax(y.numpy(), 1) for _, y in batches])
        return images[np.argsort(labels)]

    augment = Augment(crop_padding=4, flip=True)
    train = make_dataset(examples, 4, 16, 4, lambda x: x, training=True, seed=0, augment=augment)
    first, second = epoch(train), epoch(train)
    assert first.shape == pixels.shape
    assert any(not np.array_equal(a, b) for a, b in zip(first, second))  # new crops and flips each epoch
    assert any(not np.array_equal(a, p) for a, p in zip(first, pixels))
    evaluation = make_dataset(examples, 4, 16, 4, lambda x: x, training=False, seed=0, augment=augment)
    np.testing.assert_array_equal(epoch(evaluation), pixels.astype(np.float32))
    np.testing.assert_array_equal(epoch(evaluation), pixels.astype(np.float32))


def test_preprocessors_are_keras_modes():
    from triptych.data.preprocessing import get_preprocessor

    pixels = np.full((1, 2, 2, 3), 255.0, dtype="float32")
    assert np.allclose(get_preprocessor("tf")(pixels), 1.0)
    expected = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert np.allclose(np.asarray(get_preprocessor("torch")(pixels))[0, 0, 0], expected, atol=1e-5)
