"""Pretrained backbones: weights loading, the right preprocessing, frozen BatchNorm, unfreezing."""

import keras
import numpy as np
import pytest

from triptych.data.preprocessing import get_preprocessor
from triptych.errors import TriptychError
from triptych.models import build, get_spec, weights_origin
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


@pytest.mark.parametrize(
    "name, reference",
    [
        ("xception", keras.applications.xception.preprocess_input),
        ("densenet121", keras.applications.densenet.preprocess_input),
        ("resnet50", keras.applications.densenet.preprocess_input),  # ours: ImageNet mean/std like torchvision
    ],
)
def test_each_model_gets_its_own_preprocessing(name, reference):
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    ours = np.asarray(get_preprocessor(get_spec(name).preprocessing)(pixels))
    np.testing.assert_allclose(ours, np.asarray(reference(pixels.copy())), atol=1e-5)


def test_xception_and_densenet_preprocessing_differ():
    pixels = np.full((1, 2, 2, 3), 200.0, dtype="float32")
    xception = np.asarray(get_preprocessor(get_spec("xception").preprocessing)(pixels))
    densenet = np.asarray(get_preprocessor(get_spec("densenet121").preprocessing)(pixels))
    assert np.all(np.abs(xception) <= 1) and not np.allclose(xception, densenet)


def test_local_weights_file_loads_exactly(densenet_weights_file):
    path, reference = densenet_weights_file
    model = build("densenet121", 3, (32, 32, 3), weights=str(path))
    for ours, theirs in zip(model.get_layer("base").get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    assert weights_origin(str(path)).startswith("local file densenet121_notop.weights.h5 (sha256 ")


def test_wrong_architecture_weights_name_file_and_mismatch(densenet_weights_file):
    path, _ = densenet_weights_file
    with pytest.raises(TriptychError, match=r"densenet121_notop\.weights\.h5 does not fit"):
        build("xception", 3, (71, 71, 3), weights=str(path))


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
    unfreeze(model, blocks=["block14"])
    trainable = {layer.name for layer in model.get_layer("base").layers if layer.trainable}
    assert trainable and all(name.startswith("block14") for name in trainable)
    unfreeze(model, last_layers=5)
    assert sum(layer.trainable for layer in model.get_layer("base").layers) <= 5


def test_random_backbone_learns_batchnorm_statistics_faster(densenet_weights_file):
    path, _ = densenet_weights_file
    random = build("densenet121", 3, (32, 32, 3))
    pretrained = build("densenet121", 3, (32, 32, 3), weights=str(path))
    assert random.get_layer("base").get_layer("conv1_bn").momentum == 0.9
    assert pretrained.get_layer("base").get_layer("conv1_bn").momentum == 0.99
