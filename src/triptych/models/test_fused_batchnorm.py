"""Fused BatchNorm: the same numbers as Keras's layer, the auto decision (no timing), and a
trained model that plain Keras loads in a fresh process without triptych."""

import subprocess
import sys
import sysconfig
import textwrap

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from conftest import write_image_folder
from triptych.config import parse_config
from triptych.errors import InvalidArgumentError
from triptych.models import build, fused_batchnorm
from triptych.models.fused_batchnorm import (
    FUSED_MARGIN,
    MEMO_FILE,
    BatchNormalization,
    decide,
    measure_in_child,
    resolve_fused_bn,
    standard_layers_copy,
)
from triptych.runner import run_experiment
from triptych.training.precision_auto import Machine

UPSTREAM = tf.constant(np.random.default_rng(3).normal(size=(4, 5, 6, 8)), tf.float32)
EPYC = Machine("AMD EPYC 7B12", ("avx2",), None, None, "2.21.0", "3.15.1")


@pytest.fixture(autouse=True)
def fresh_process_memo(monkeypatch):
    monkeypatch.setattr(fused_batchnorm, "_CHOSEN", {})


def twin_layers(shape, **config):
    """Keras's layer with random weights and ours with the same config and weights."""
    standard = keras.layers.BatchNormalization(
        gamma_initializer="random_normal", beta_initializer="random_normal", moving_mean_initializer="random_normal",
        **config,
    )
    standard.build(shape)
    fused = BatchNormalization(**standard.get_config())
    fused.build(shape)
    fused.set_weights(standard.get_weights())
    return standard, fused


def forward_and_gradients(layer, x, training):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(y * UPSTREAM) + tf.reduce_sum(y**2)  # a non-trivial upstream gradient
    return [y.numpy()] + [g.numpy() for g in tape.gradient(loss, [x, layer.gamma, layer.beta])]


@pytest.mark.parametrize("config", [{"epsilon": 1e-5, "momentum": 0.9}, {}], ids=["resnet", "keras-defaults"])
@pytest.mark.parametrize("training", [True, False])
def test_fused_layer_equals_keras_forward_gradients_and_moving_statistics(config, training):
    x = tf.constant(np.random.default_rng(0).normal(2, 3, (4, 5, 6, 8)), tf.float32)
    standard, fused = twin_layers(x.shape, **config)
    initial_mean = fused.moving_mean.numpy()
    for _ in range(2):  # the second step starts from updated moving statistics
        expected, got = forward_and_gradients(standard, x, training), forward_and_gradients(fused, x, training)
        for want, have in zip(expected, got, strict=True):
            np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        for want, have in zip(standard.get_weights(), fused.get_weights(), strict=True):
            np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6)
    assert (not np.allclose(fused.moving_mean.numpy(), initial_mean)) == training  # the statistics moved only in training


def test_other_ranks_fall_back_to_keras():
    x = tf.constant(np.random.default_rng(1).normal(size=(6, 5)), tf.float32)
    standard, fused = twin_layers(x.shape)
    np.testing.assert_allclose(fused(x, training=True), standard(x, training=True), rtol=1e-6)
    np.testing.assert_allclose(fused.moving_variance, standard.moving_variance, rtol=1e-6)


def test_standard_copy_has_only_keras_layers_and_the_same_outputs(tmp_path):
    model = build("resnet18", 3, (16, 16, 3), stem="cifar", fused_bn=True)
    assert any(isinstance(layer, BatchNormalization) for layer in model.layers)
    copy = standard_layers_copy(model)
    assert not any(isinstance(layer, BatchNormalization) for layer in copy.layers)
    assert [layer.name for layer in copy.layers] == [layer.name for layer in model.layers]
    x = np.random.default_rng(2).normal(size=(2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    # Weights files (resume, best.weights.h5) go either way between the two classes.
    model.save_weights(tmp_path / "fused.weights.h5")
    plain = build("resnet18", 3, (16, 16, 3), stem="cifar", fused_bn=False)
    assert not any(isinstance(layer, BatchNormalization) for layer in plain.layers)
    plain.load_weights(tmp_path / "fused.weights.h5")
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    assert standard_layers_copy(plain) is plain  # nothing to swap: no clone


@pytest.mark.parametrize("speedup, expected", [(1.25, True), (FUSED_MARGIN, True), (1.0, False), (0.9, False)])
def test_auto_fuses_only_when_measured_faster_by_the_margin(speedup, expected):
    fused, reason = decide(speedup)
    assert fused is expected and f"{speedup:.2f}x" in reason


def test_a_failed_measurement_means_keras_layer_and_says_why():
    fused, reason = decide(None, "the measurement process was killed by SIGSEGV")
    assert fused is False and "SIGSEGV" in reason


def test_auto_is_measured_once_per_machine_and_remembered(tmp_path):
    calls = []

    def measure():
        calls.append(1)
        return {"fused_speedup": 1.2}

    first = resolve_fused_bn("auto", cache=tmp_path, machine=EPYC, measure=measure)
    assert first.fused and "measured now" in first.reason and (tmp_path / MEMO_FILE).is_file()
    fused_batchnorm._CHOSEN.clear()  # a new process: the file answers
    again = resolve_fused_bn("auto", cache=tmp_path, machine=EPYC, measure=measure)
    assert again.fused and "remembered" in again.reason and len(calls) == 1


@pytest.mark.parametrize("requested", [True, False])
def test_explicit_choice_is_kept_without_measuring(requested):
    assert resolve_fused_bn(requested, measure=pytest.fail).fused is requested


def test_unknown_choice_names_the_config_key():
    with pytest.raises(InvalidArgumentError, match="model.options.fused_bn"):
        resolve_fused_bn("yes")


def test_measurement_child_reports_a_speedup():
    measured = measure_in_child(probe={"rounds": 1, "batch": 2, "image_size": 16, "width": 4})
    assert measured.get("fused_speedup", 0) > 0, measured


def test_model_trained_with_fused_bn_loads_in_plain_keras_without_triptych(tmp_path, monkeypatch):
    fusable, fused_calls = BatchNormalization._fusable, []

    def spy(self, inputs, mask):
        fused_calls.append(fusable(self, inputs, mask))
        return fused_calls[-1]

    monkeypatch.setattr(BatchNormalization, "_fusable", spy)
    folder = write_image_folder(tmp_path / "images", ["a", "b", "c"], 8, size=16)
    raw = {"experiments": [{
        "name": "fused",
        "model": {"name": "resnet18", "options": {"stem": "cifar", "fused_bn": True}},
        "data": {"dataset": "folder", "path": str(folder), "image_size": 16, "batch_size": 8, "val_fraction": 0.25,
                 "test_fraction": 0.25, "duplicates": "allow"},
        "training": {"epochs": 1, "learning_rate": 0.01},
    }]}
    run = run_experiment(parse_config(raw).experiments[0], tmp_path / "out", seed=0, log=lambda _: None)
    assert any(fused_calls)  # training went through the fused kernel
    predictions = pd.read_csv(run.predictions)
    from triptych.data.images import decode_image
    from triptych.data.preprocessing import get_preprocessor

    images = [tf.cast(decode_image(tf.io.read_file(path)), tf.float32) for path in predictions["path"][:4]]
    np.save(tmp_path / "x.npy", get_preprocessor("torch")(tf.stack(images)).numpy())
    script = textwrap.dedent(f"""
        import importlib.util, sys
        sys.path.append({sysconfig.get_paths()["purelib"]!r})  # no .pth files: triptych's editable install stays out
        assert importlib.util.find_spec("triptych") is None, "triptych is importable"
        import keras, numpy as np
        model = keras.saving.load_model({str(run.model)!r}, safe_mode=True)
        np.save({str(tmp_path / "y.npy")!r}, model.predict(np.load({str(tmp_path / "x.npy")!r}), verbose=0))
    """)
    child = subprocess.run([sys.executable, "-I", "-S", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300, check=False)
    assert child.returncode == 0, child.stderr[-2000:]
    expected = predictions.filter(like="prob_").iloc[:4].to_numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-4)
