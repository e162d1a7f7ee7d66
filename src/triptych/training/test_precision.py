"""Mixed precision as a config switch: policies, float32 softmax and loss, loss scaling for fp16,
and a whole experiment through the runner under bf16 (and a MirroredStrategy scope)."""

import keras
import numpy as np
import pytest

from triptych.config import TrainingConfig, parse_config
from triptych.errors import TriptychError
from triptych.models import build, pretrained
from triptych.runner import run_experiment
from triptych.training.precision import (
    check_float32_outputs,
    compute_dtype,
    policy_name,
    precision_scope,
    uses_loss_scaling,
)
from triptych.training.trainer import compile_model


def test_policies_and_scope_restores_global_policy():
    assert [policy_name(p) for p in ("fp32", "bf16", "fp16")] == ["float32", "mixed_bfloat16", "mixed_float16"]
    with pytest.raises(TriptychError, match="bf16"):
        policy_name("int8")
    with pytest.raises(TriptychError, match="resolve_precision"):  # auto is resolved first, and recorded
        policy_name("auto")
    before = keras.config.dtype_policy().name
    with precision_scope("bf16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == before


def test_config_accepts_precision_and_strategy_and_names_the_allowed_values():
    exp = {"name": "x", "training": {"precision": "bf16", "strategy": "mirrored"}}
    training = parse_config({"experiments": [exp]}).experiments[0].training
    assert (training.precision, training.strategy) == ("bf16", "mirrored")
    assert (TrainingConfig().precision, TrainingConfig().strategy) == ("auto", "default")
    with pytest.raises(TriptychError, match="fp16"):
        parse_config({"experiments": [{"name": "x", "training": {"precision": "half"}}]})
    with pytest.raises(TriptychError, match="multiworker"):
        parse_config({"experiments": [{"name": "x", "training": {"strategy": "tpu"}}]})


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_model_computes_in_16_bits_with_float32_softmax(precision):
    fp32 = build("resnet18", 10, (32, 32, 3), stem="cifar")
    with precision_scope(precision):
        mixed = build("resnet18", 10, (32, 32, 3), stem="cifar")
    assert compute_dtype(mixed) == {"bf16": "bfloat16", "fp16": "float16"}[precision]
    assert mixed.get_layer("stem_conv").kernel.dtype == "float32"  # variables stay float32
    assert mixed.get_layer("predictions").compute_dtype == "float32"
    check_float32_outputs(mixed)
    assert mixed.count_params() == fp32.count_params()
    mixed.set_weights(fp32.get_weights())  # same weights, interchangeable
    images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype("float32")
    probabilities = mixed.predict(images, verbose=0)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities, fp32.predict(images, verbose=0), atol=0.05)


def test_a_16_bit_softmax_is_refused():
    with precision_scope("bf16"):
        inputs = keras.Input((4,))
        outputs = keras.layers.Dense(3, activation="softmax")(inputs)
        model = keras.Model(inputs, outputs, name="careless")
    with pytest.raises(TriptychError, match="float32"):
        check_float32_outputs(model)


@pytest.mark.parametrize("precision, scaled", [("fp32", False), ("bf16", False), ("fp16", True)])
def test_training_step_loss_scaling_only_for_fp16(precision, scaled):
    cfg = TrainingConfig(epochs=1, optimizer="sgd", learning_rate=0.01, precision=precision)
    with precision_scope(precision):  # a tiny net: float16 convolutions are emulated (slow) on CPUs
        inputs = keras.Input((16, 16, 3))
        x = keras.layers.Conv2D(4, 3, strides=2, name="conv")(inputs)
        x = keras.layers.BatchNormalization(name="bn")(x)
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        outputs = keras.layers.Dense(3, activation="softmax", dtype="float32", name="predictions")(x)
        model = keras.Model(inputs, outputs)
        compile_model(model, cfg, steps_per_epoch=100)
    assert uses_loss_scaling(model) is scaled
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (8, 16, 16, 3)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 8)]
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) > 0  # what HistoryWriter reads


def test_pretrained_head_softmax_is_float32(monkeypatch):
    def tiny_backbone(include_top=False, weights=None, input_shape=(32, 32, 3)):
        inputs = keras.Input(input_shape)
        x = keras.layers.Conv2D(8, 3, name="conv1_conv")(inputs)
        return keras.Model(inputs, x, name="densenet121")

    monkeypatch.setitem(pretrained.BACKBONES, "densenet121", tiny_backbone)
    with precision_scope("bf16"):
        model = build("densenet121", 3, (32, 32, 3))
    assert model.get_layer("base").get_layer("conv1_conv").compute_dtype == "bfloat16"
    check_float32_outputs(model)


def test_experiment_end_to_end_in_bf16_under_a_mirrored_strategy(tmp_path, image_folder):
    raw = {
        "experiments": [
            {
                "name": "r18",
                "model": {"name": "resnet18", "options": {"stem": "cifar"}},
                "data": {
                    "dataset": "folder",
                    "path": str(image_folder),
                    "image_size": 16,
                    "batch_size": 16,
                    "duplicates": "allow",
                },
                "training": {"epochs": 1, "learning_rate": 0.01, "precision": "bf16", "strategy": "mirrored"},
            }
        ]
    }
    exp = parse_config(raw).experiments[0]
    before = keras.config.dtype_policy().name
    run = run_experiment(exp, tmp_path / "out", seed=0, log=lambda m: None)
    assert run.is_done()
    assert keras.config.dtype_policy().name == before  # the policy does not leak out of the experiment
    saved = keras.saving.load_model(run.model)
    assert saved.get_layer("stem_conv").compute_dtype == "bfloat16"
    assert saved.get_layer("predictions").compute_dtype == "float32"
