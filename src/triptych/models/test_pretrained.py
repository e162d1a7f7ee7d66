"""Pretrained backbones: weights loading, the right preprocessing, frozen BatchNorm, unfreezing."""

import keras
import numpy as np
import pytest

from triptych.errors import TriptychError
from triptych.models import build, weights_origin
from triptych.models.pretrained import unfreeze


@pytest.fixture(scope="module")
def densenet_weights_file(tmp_path_factory):
    """A DenseNet-121 backbone weights file the test writes itself (no download needed)."""
    path = tmp_path_factory.mktemp("weights") / "densenet121_notop.weights.h5"
    base = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(32, 32, 3))
    rng = np.random.default_rng(0)
    base.set_weights([w + rng.normal(0, 0.01, w.shape).astype(w.dtype) for w in base.get_weights()])
    base.save_weights(str(path))
    return path, base


def test_local_weights_file_loads_exactly(densenet_weights_file):
    path, reference = densenet_weights_file
    model = build("densenet121", 3, (32, 32, 3), weights=str(path))
    for ours, theirs in zip(model.get_layer("base").get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    assert weights_origin(str(path)).startswith("local file densenet121_notop.weights.h5 (sha256 ")


def test_wrong_architecture_weights_name_file_and_mismatch(densenet_weights_file):
    path, _ = densenet_weights_file
    with pytest.raises(TriptychError, match=r"densenet121_notop\.weights\.h5 does not fit model xception: ") as caught:
        build("xception", 3, (71, 71, 3), weights=str(path))
    assert "\n" not in str(caught.value)


def test_head_is_gap_dropout_dense_with_l2():
    model = build("densenet121", 4, (32, 32, 3), dropout=0.4, l2=1e-3)
    assert [layer.name for layer in model.layers[-3:]] == ["avg_pool", "head_dropout", "predictions"]
    assert model.get_layer("head_dropout").rate == 0.4
    assert model.get_layer("predictions").kernel_regularizer.l2 == pytest.approx(1e-3)


def test_pretrained_batchnorm_never_updates_even_when_unfrozen(densenet_weights_file):
    path, _ = densenet_weights_file
    model = build("densenet121", 3, (32, 32, 3), weights=str(path))
    count = unfreeze(model, blocks=["conv5_block16"])
    assert count > 0
    base = model.get_layer("base")
    bn = base.get_layer("conv5_block16_1_bn")
    conv = base.get_layer("conv5_block16_2_conv")
    assert not bn.trainable and conv.trainable and not base.get_layer("conv2_block1_1_conv").trainable
    before_stats = [w.copy() for w in bn.get_weights()]
    before_conv = conv.get_weights()[0].copy()
    model.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy")
    x = np.random.default_rng(0).uniform(-2, 2, (4, 32, 32, 3)).astype("float32")
    model.fit(x, keras.utils.to_categorical([0, 1, 2, 0], 3), epochs=1, verbose=0)
    for before, after in zip(before_stats, bn.get_weights()):
        np.testing.assert_array_equal(before, after)  # gamma, beta and moving statistics untouched
    assert not np.allclose(before_conv, conv.get_weights()[0])  # while the unfrozen conv learned


def test_unfreeze_unknown_block_is_clear():
    model = build("densenet121", 3, (32, 32, 3))
    with pytest.raises(TriptychError, match="block 'block99'"):
        unfreeze(model, blocks=["block99"])


def test_unfreeze_last_layers_and_xception_block_names():
    model = build("xception", 3, (71, 71, 3))
    base = model.get_layer("base")
    unfreeze(model, blocks=["block14"])
    trainable = {layer.name for layer in base.layers if layer.trainable}
    assert trainable and all(name.startswith("block14") for name in trainable)
    count = unfreeze(model, last_layers=5)
    last_five = base.layers[-5:]
    expected = {layer.name for layer in last_five if not isinstance(layer, keras.layers.BatchNormalization)}
    assert {layer.name for layer in base.layers if layer.trainable} == expected
    assert count == sum(bool(base.get_layer(name).weights) for name in expected) >= 1


def test_random_backbone_learns_batchnorm_statistics_faster(densenet_weights_file):
    """From random weights the moving statistics reach the data's within a few steps (momentum 0.9:
    0.9**20 = 12 % of the gap left; Keras's 0.99 would leave 82 %), while a pretrained backbone
    keeps its ImageNet statistics (momentum untouched, BN in inference mode)."""
    path, _ = densenet_weights_file
    model = build("mobilenet", 3, (32, 32, 3))
    bn = model.get_layer("base").get_layer("conv1_bn")
    conv = model.get_layer("base").get_layer("conv1")
    x = np.random.default_rng(0).uniform(0, 3, (4, 32, 32, 3)).astype("float32")
    trunk = keras.Model(model.get_layer("base").input, conv.output)
    batch_mean = np.asarray(trunk(x, training=False)).mean(axis=(0, 1, 2))
    start_gap = np.abs(np.asarray(bn.moving_mean) - batch_mean).max()
    model.compile(keras.optimizers.SGD(0.0), "categorical_crossentropy")  # weights fixed: only BN statistics move
    steps = 20
    model.fit(np.tile(x, (steps, 1, 1, 1)), keras.utils.to_categorical([0, 1, 2, 0] * steps, 3), batch_size=4,
              epochs=1, shuffle=False, verbose=0)
    gap = np.abs(np.asarray(bn.moving_mean) - batch_mean).max()
    assert start_gap > 0.1 and gap < 0.25 * start_gap
    pretrained = build("densenet121", 3, (32, 32, 3), weights=str(path))
    assert pretrained.get_layer("base").get_layer("conv1_bn").momentum == 0.99
