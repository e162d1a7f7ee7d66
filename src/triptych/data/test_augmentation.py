"""The Keras augmentation layers in the tf.data pipeline: on training data only, labels mixed right."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from triptych.config import AugmentConfig
from triptych.data.augmentation import Augment
from triptych.data.pipeline import make_dataset
from triptych.data.sources import Examples

SIZE, COUNT, CLASSES = 16, 8, 4


def _examples() -> Examples:
    pixels = np.random.default_rng(0).integers(0, 256, (COUNT, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.arange(COUNT) % CLASSES
    return Examples(labels=labels, ids=np.array([f"m/train/{i}" for i in range(COUNT)]), images=pixels)


def _collect(dataset) -> tuple[np.ndarray, np.ndarray]:
    batches = list(dataset)
    return np.concatenate([x.numpy() for x, _ in batches]), np.concatenate([y.numpy() for _, y in batches])


def _pass(augment: Augment, training: bool, batch: int = 4):
    ds = make_dataset(_examples(), CLASSES, SIZE, batch, lambda x: x, training=training, seed=0, augment=augment, cache=True)
    return _collect(ds)


def _sorted_pixels(images: np.ndarray) -> np.ndarray:
    # An order-free fingerprint of a pass: shuffling alone leaves it unchanged, augmentation does not.
    return np.sort(images.reshape(len(images), -1).sum(axis=1))


AUGMENTATIONS = {
    "rand_augment": Augment(rand_augment=(2, 0.9)),
    "zoom": Augment(zoom=0.5),
    "erasing": Augment(erasing=1.0),
    "mixup": Augment(mixup=0.4),
    "cutmix": Augment(cutmix=1.0),
    "mixup+cutmix": Augment(mixup=0.4, cutmix=1.0),
}


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_each_augmentation_changes_training_images_only(name):
    augment = AUGMENTATIONS[name]
    original = _examples().images.astype(np.float32)
    train_images, _ = _pass(augment, training=True)
    assert train_images.shape == original.shape
    assert not np.allclose(_sorted_pixels(train_images), _sorted_pixels(original))
    assert train_images.min() >= 0 and train_images.max() <= 255.001  # still pixels for the preprocessing
    test_images, test_labels = _pass(augment, training=False)
    np.testing.assert_array_equal(test_images, original)
    np.testing.assert_array_equal(test_labels, np.eye(CLASSES)[_examples().labels])


@pytest.mark.parametrize("name", ["mixup", "cutmix", "mixup+cutmix"])
def test_mixing_gives_soft_labels_that_sum_to_one(name):
    _, labels = _pass(AUGMENTATIONS[name], training=True, batch=COUNT)
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
    assert (labels >= 0).all()
    assert ((labels > 1e-4) & (labels < 1 - 1e-4)).any()  # some label is really mixed


def test_per_image_augmentation_keeps_labels_one_hot():
    _, labels = _pass(Augment(rand_augment=(2, 0.5), zoom=0.2, erasing=0.5), training=True)
    assert set(np.unique(labels)) == {0.0, 1.0}


def test_string_names_every_option_that_is_on_and_keeps_the_old_form():
    assert str(Augment(4, True)) == "Augment(crop_padding=4, flip=True)"  # feature-cache keys of earlier runs
    text = str(Augment(crop_padding=4, rand_augment=(2, 0.5), zoom=0.1, erasing=0.25, mixup=0.2, cutmix=1.0))
    for part in ("rand_augment=(2, 0.5)", "zoom=0.1", "erasing=0.25", "mixup=0.2", "cutmix=1.0"):
        assert part in text
    assert str(Augment(mixup=0.2)) != str(Augment(mixup=0.3))


def test_from_config_maps_every_key():
    config = AugmentConfig.model_validate(
        {"crop_padding": 2, "flip": True, "rand_augment": {"num_ops": 3, "magnitude": 0.7}, "zoom": 0.1,
         "erasing": 0.25, "mixup": 0.2, "cutmix": 0.5}
    )
    assert Augment.from_config(config) == Augment(2, True, (3, 0.7), 0.1, 0.25, 0.2, 0.5)
    assert Augment.from_config(AugmentConfig()) == Augment()
    assert not Augment().enabled and not Augment().mixes


def test_data_stays_float32_under_a_mixed_precision_policy():
    everything = Augment(crop_padding=2, flip=True, rand_augment=(2, 0.5), zoom=0.2, erasing=0.5, mixup=0.2, cutmix=1.0)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")  # what training.precision: bf16 sets before the data
    try:
        ds = make_dataset(_examples(), CLASSES, SIZE, 4, lambda x: x, training=True, seed=0, augment=everything)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert [spec.dtype for spec in ds.element_spec] == [tf.float32, tf.float32]
    images, labels = next(iter(ds))
    assert images.dtype == tf.float32 and labels.dtype == tf.float32
