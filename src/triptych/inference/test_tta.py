"""Flip test-time augmentation: the mean of the plain and the mirrored predictions."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from triptych.errors import InvalidArgumentError
from triptych.inference.tta import predict_with_tta


@pytest.fixture(scope="module")
def model_and_images():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    # Flatten + Dense sees where things are, so a mirror image gets other probabilities.
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs))
    images = np.random.default_rng(0).uniform(0, 1, (5, 8, 8, 3)).astype("float32")
    return keras.Model(inputs, outputs), images


def _predict(model):
    return lambda dataset: np.concatenate([model(x, training=False).numpy() for x, _ in dataset])


def test_flip_averages_plain_and_mirrored_predictions(model_and_images):
    model, images = model_and_images
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(5))).batch(2)
    plain = model(images).numpy()
    mirrored = model(np.ascontiguousarray(images[:, :, ::-1, :])).numpy()
    assert not np.allclose(plain, mirrored, atol=1e-4)  # else the test could not tell
    got = predict_with_tta(_predict(model), dataset, "flip")
    np.testing.assert_allclose(got, (plain + mirrored) / 2, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(predict_with_tta(_predict(model), dataset, "none"), plain, atol=1e-6)


def test_unknown_mode_names_the_argument(model_and_images):
    model, images = model_and_images
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(5))).batch(2)
    with pytest.raises(InvalidArgumentError, match=r"^tta must be one of none, flip; got 'rotate'"):
        predict_with_tta(_predict(model), dataset, "rotate")
