"""The trainer's optional recipe parts: the weights' moving average (EMA) and balanced class weights."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from triptych.config import TrainingConfig
from triptych.training.ema import RawWeightsBack
from triptych.training.trainer import RunFiles, balanced_class_weights, fit

FEATURES, CLASSES, COUNT = 6, 3, 24


def _data(batch: int = 8) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(COUNT, FEATURES)).astype("float32")
    y = np.eye(CLASSES, dtype="float32")[np.arange(COUNT) % CLASSES]
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    return train, tf.data.Dataset.from_tensor_slices((x[:9], y[:9])).batch(batch)


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((FEATURES,))
    return keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(inputs))


def _files(root) -> RunFiles:
    return RunFiles(root / "history.csv", root / "best.weights.h5", root / "backup", root / "tb")


def _config(**changes) -> TrainingConfig:
    base = {"epochs": 1, "optimizer": "sgd", "learning_rate": 0.5, "weight_decay": 0.0, "schedule": "constant",
            "tensorboard": False}
    return TrainingConfig(**{**base, **changes})


def _weights(model: keras.Model) -> list[np.ndarray]:
    return [np.array(w) for w in model.get_weights()]


def _differ(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return any(not np.allclose(x, y, atol=1e-4) for x, y in zip(a, b))


def test_ema_validates_checkpoints_and_ends_with_the_average(tmp_path):
    train, val = _data()
    raw_model = _model()
    fit(raw_model, train, val, _config(), _files(tmp_path / "raw"), steps_per_epoch=3, verbose=0)
    ema_model = _model()
    fit(ema_model, train, val, _config(ema=True, ema_momentum=0.6), _files(tmp_path / "ema"), steps_per_epoch=3, verbose=0)

    assert ema_model.optimizer.use_ema and ema_model.optimizer.ema_momentum == 0.6
    assert _differ(_weights(ema_model), _weights(raw_model))  # the average, not the last raw weights
    saved = _model()
    saved.load_weights(str(tmp_path / "ema" / "best.weights.h5"))
    for got, want in zip(_weights(saved), _weights(ema_model)):
        np.testing.assert_allclose(got, want, atol=1e-6)
    # Validation ran on the averaged weights: the logged val_loss is theirs.
    val_loss = float(pd.read_csv(tmp_path / "ema" / "history.csv")["val_loss"].iloc[0])
    ema_model.compile(loss="categorical_crossentropy")
    assert ema_model.evaluate(val, verbose=0, return_dict=True)["loss"] == pytest.approx(val_loss, rel=1e-4)


def test_raw_weights_go_back_into_the_model_before_the_backup():
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.5, use_ema=True, ema_momentum=0.6), loss="categorical_crossentropy")
    train, _ = _data()
    for x, y in train:
        model.train_on_batch(x, y)  # no fit: nothing copies the average into the model
    raw = _weights(model)
    swap = keras.callbacks.SwapEMAWeights(swap_on_epoch=True)
    back = RawWeightsBack(swap)
    for callback in (swap, back):
        callback.set_model(model)
        callback.set_params({"epochs": 5})
    swap.on_epoch_end(0)
    averaged = _weights(model)
    assert _differ(averaged, raw)
    back.on_epoch_end(0)
    for got, want in zip(_weights(model), raw):
        np.testing.assert_allclose(got, want, atol=1e-5)
    swap.on_epoch_begin(1)  # the next epoch trains the raw weights
    for got, want in zip(_weights(model), raw):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_balanced_class_weights_match_a_hand_computation():
    # 6 samples, 3 classes: n / (k * count) = 6 / (3 * 3), 6 / (3 * 2), 6 / (3 * 1)
    assert balanced_class_weights(np.array([0, 0, 0, 1, 1, 2])) == pytest.approx({0: 2 / 3, 1: 1.0, 2: 2.0})
    # a class missing from the training labels gets no weight (Keras then uses 1)
    assert balanced_class_weights(np.array([0, 2, 2])) == pytest.approx({0: 1.5, 2: 0.75})


def test_class_weight_reaches_the_loss(tmp_path):
    train, val = _data()
    weighted = _model()
    before = _weights(weighted)
    zero = {c: 0.0 for c in range(CLASSES)}  # every sample weighs nothing: no gradient, no change
    fit(weighted, train, val, _config(momentum=0.0), _files(tmp_path / "w"), steps_per_epoch=3, verbose=0,
        class_weight=zero)
    assert not _differ(_weights(weighted), before)
    plain = _model()
    fit(plain, train, val, _config(momentum=0.0), _files(tmp_path / "p"), steps_per_epoch=3, verbose=0)
    assert _differ(_weights(plain), before)


class _CountsTraces(keras.layers.Layer):
    """Counts how often the training step is traced: Python in ``call`` runs only while tracing."""

    def __init__(self):
        super().__init__()
        self.traces = 0

    def call(self, x, training=None):
        if training:
            self.traces += 1
        return x


def test_the_first_fit_traces_its_training_step_once(tmp_path):
    """compile_model builds the loss and metric variables up front: a step that creates variables is
    traced twice by TensorFlow (a minute of tracing for DenseNet-121 on a CPU, half of it the second)."""
    train, val = _data()
    counter = _CountsTraces()
    inputs = keras.Input((FEATURES,))
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(counter(inputs)))
    fit(model, train, val, _config(epochs=2), _files(tmp_path), steps_per_epoch=3, verbose=0)
    assert counter.traces == 1


def test_fit_keeps_the_training_step_of_a_model_compiled_for_other_epochs(tmp_path):
    """A budget's warm-up compiles and traces for the configured epochs; fit for the chosen epochs
    retimes the schedule instead of compiling (and tracing) again, and trains on that schedule."""
    from triptych.training.trainer import compile_model

    train, val = _data()
    counter = _CountsTraces()
    inputs = keras.Input((FEATURES,))
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(counter(inputs)))
    cfg = _config(epochs=8, schedule="cosine", warmup_epochs=2)
    compile_model(model, cfg, steps_per_epoch=3)
    model.fit(train.repeat(), steps_per_epoch=2, epochs=1, verbose=0)  # the warm-up's trace
    for variable in model.optimizer.variables:  # what the warm-up puts back
        variable.assign(np.zeros(variable.shape, variable.dtype))
    traced = counter.traces
    assert traced >= 1

    chosen = _config(epochs=2, schedule="cosine", warmup_epochs=0.5)
    fit(model, train, val, chosen, _files(tmp_path), steps_per_epoch=3, verbose=0)
    assert counter.traces == traced
    logged = pd.read_csv(tmp_path / "history.csv")["learning_rate"].to_numpy()
    expected = [float(keras.optimizers.schedules.CosineDecay(0.5, decay_steps=6 - 2)(step - 2)) for step in (3, 6)]
    np.testing.assert_allclose(logged, expected, rtol=1e-5)


def test_fit_compiles_again_when_the_model_has_trained_or_its_training_changed(tmp_path):
    train, val = _data()
    counter = _CountsTraces()
    inputs = keras.Input((FEATURES,))
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(counter(inputs)))
    counts = []
    for name, cfg in (("a", _config()), ("b", _config()), ("c", _config(learning_rate=0.1))):  # b: has trained
        fit(model, train, val, cfg, _files(tmp_path / name), steps_per_epoch=3, verbose=0)
        counts.append(counter.traces)
    assert counts[0] < counts[1] < counts[2]
