import json

import keras
import numpy as np

from triptych.training.backup import METADATA, EpochBackup, agreed_epochs


def _model() -> keras.Model:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy")
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(12, 4)).astype("float32"), np.eye(2, dtype="float32")[rng.integers(0, 2, 12)]


class _Seen(keras.callbacks.Callback):
    """The epochs fit runs and the optimizer's step count when each begins."""

    def on_train_begin(self, logs=None):
        self.epochs, self.steps = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)
        self.steps.append(int(self.model.optimizer.iterations.numpy()))


def test_each_epoch_is_committed_and_the_last_two_kept(tmp_path):
    x, y = _data()
    _model().fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[EpochBackup(tmp_path)])
    assert json.loads((tmp_path / METADATA).read_text())["epoch"] == 3
    assert sorted(p.name for p in tmp_path.glob("epoch-*")) == ["epoch-2.weights.h5", "epoch-3.weights.h5"]


def test_resume_restores_the_committed_epoch_not_a_newer_uncommitted_file(tmp_path):
    """A kill after epoch 2's weights file but before its commit: training resumes after epoch 1
    with epoch 1's weights and step count (3 steps an epoch), not epoch 2's."""
    x, y = _data()
    first = _model()
    first.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[EpochBackup(tmp_path)])
    (tmp_path / METADATA).write_text(json.dumps({"epoch": 1, "batch": 0}))  # the commit of epoch 2 never came

    seen = _Seen()
    _model().fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[seen, EpochBackup(tmp_path)])
    assert seen.epochs == [1] and seen.steps == [3]


def test_one_replica_agrees_with_itself():
    assert agreed_epochs(None, 4) == 4
