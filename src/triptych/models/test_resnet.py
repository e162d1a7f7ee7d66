"""The from-scratch ResNets are the real ones: parameter counts and keras.applications parity."""

import keras
import numpy as np
import pytest

from triptych.errors import TriptychError
from triptych.models import build, list_models

# (trainable = torchvision's count, Keras count_params with BN moving statistics), 1000 classes, 224x224.
REFERENCE_COUNTS = {
    "resnet18": (11_689_512, 11_699_112),
    "resnet34": (21_797_672, 21_814_696),
    "resnet50": (25_557_032, 25_610_152),
    "resnet101": (44_549_160, 44_654_504),
    "resnet152": (60_192_808, 60_344_232),
}


def trainable_count(model: keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_parameter_counts_match_reference(name):
    model = build(name, 1000, (224, 224, 3))
    trainable, total = REFERENCE_COUNTS[name]
    assert trainable_count(model) == trainable
    assert model.count_params() == total


def test_keras_compat_resnet50_is_keras_applications_resnet50():
    ours = build("resnet50", 1000, (224, 224, 3), keras_compat=True)
    reference = keras.applications.ResNet50(weights=None)
    assert ours.count_params() == reference.count_params() == 25_636_712
    # Perturb BN statistics so that the check is not passed by the identity-like init alone.
    rng = np.random.default_rng(0)
    weights = [w + rng.normal(0, 0.05, w.shape).astype(w.dtype) if w.ndim == 1 else w for w in reference.get_weights()]
    weights = [np.abs(w) + 0.5 if "moving_variance" in v.path else w for w, v in zip(weights, reference.weights)]
    reference.set_weights(weights)
    ours.set_weights(reference.get_weights())
    images = rng.uniform(-1, 1, (2, 224, 224, 3)).astype("float32")
    ours_features = keras.Model(ours.input, ours.get_layer("avg_pool").output).predict(images, verbose=0)
    ref_features = keras.Model(reference.input, reference.get_layer("avg_pool").output).predict(images, verbose=0)
    assert np.abs(ref_features).max() > 1e-3  # not a degenerate all-zero comparison
    np.testing.assert_allclose(ours_features, ref_features, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(ours.predict(images, verbose=0), reference.predict(images, verbose=0), atol=1e-4)


def test_layer_names_are_readable():
    model = build("resnet50", 10, (64, 64, 3))
    names = {layer.name for layer in model.layers}
    assert {"stem_conv", "stage2_block3_conv2", "stage2_block1_shortcut_conv", "stage4_block3_out"} <= names
    assert "stage2_block2_shortcut_conv" not in names  # identity shortcut inside a stage


def test_v15_stride_on_3x3_and_no_bias():
    model = build("resnet50", 10, (64, 64, 3))
    assert model.get_layer("stage2_block1_conv1").strides == (1, 1)
    assert model.get_layer("stage2_block1_conv2").strides == (2, 2)
    assert not any(getattr(layer, "use_bias", False) for layer in model.layers if isinstance(layer, keras.layers.Conv2D))


def test_stride_two_at_start_of_stages_2_to_4():
    model = build("resnet18", 10, (64, 64, 3), stem="imagenet")
    sizes = [model.get_layer(f"stage{s}_block1_out").output.shape[1] for s in (1, 2, 3, 4)]
    assert sizes == [16, 8, 4, 2]


def test_cifar_stem_keeps_resolution():
    model = build("resnet18", 10, (32, 32, 3), stem="cifar")
    assert model.get_layer("stage1_block1_out").output.shape[1:3] == (32, 32)
    assert "stem_pool" not in {layer.name for layer in model.layers}


def test_dropout_and_zero_init_residual():
    model = build("resnet18", 10, (32, 32, 3), stem="cifar", dropout=0.3, zero_init_residual=True)
    assert model.get_layer("head_dropout").rate == 0.3
    assert np.all(model.get_layer("stage1_block1_bn2").gamma.numpy() == 0)
    assert np.all(model.get_layer("stage1_block1_bn1").gamma.numpy() == 1)


def test_tiny_model_trains_one_step():
    model = build("resnet18", 3, (32, 32, 3), stem="cifar")
    model.compile("sgd", "categorical_crossentropy")
    x = np.random.default_rng(0).uniform(size=(4, 32, 32, 3)).astype("float32")
    y = keras.utils.to_categorical([0, 1, 2, 0], 3)
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)


def test_unknown_model_lists_valid_names():
    with pytest.raises(TriptychError, match="valid models: .*resnet50"):
        build("resnet49", 10)


def test_unknown_option_is_a_clear_error():
    with pytest.raises(TriptychError, match="unknown option.*depthwise"):
        build("resnet18", 10, depthwise=True)


def test_weights_of_wrong_architecture_name_the_file(tmp_path):
    small = build("resnet18", 10, (32, 32, 3), stem="cifar")
    path = tmp_path / "r18.weights.h5"
    small.save_weights(str(path))
    with pytest.raises(TriptychError, match=r"r18\.weights\.h5 does not fit model resnet34"):
        build("resnet34", 10, (32, 32, 3), weights=str(path), stem="cifar")


def test_registry_lists_the_resnets():
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"} <= {s.name for s in list_models()}
