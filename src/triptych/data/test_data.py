import numpy as np
import pytest

from triptych.data.sources import fingerprint, load_cifar10, load_folder
from triptych.data.splits import make_splits
from triptych.data.sources import Examples, list_image_folder
from triptych.data.splits import stratified_subset
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


def test_fingerprint_changes_with_content(image_folder):
    source = load_folder(image_folder)
    first = fingerprint(source.train)
    assert first == fingerprint(source.train)
    assert first != fingerprint(source.train.take(np.arange(10)))


def test_pipeline_batches_resizes_augments_and_keeps_order(image_folder):
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


def test_preprocessors_are_keras_modes():
    from triptych.data.preprocessing import get_preprocessor

    pixels = np.full((1, 2, 2, 3), 255.0, dtype="float32")
    assert np.allclose(get_preprocessor("tf")(pixels), 1.0)
    expected = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert np.allclose(np.asarray(get_preprocessor("torch")(pixels))[0, 0, 0], expected, atol=1e-5)
