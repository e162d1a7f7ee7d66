"""Every keras.applications family in the registry: built (random weights, small inputs), fed its own
preprocessing, with named blocks to unfreeze, and ImageNet weights looked up under $TRIPTYCH_WEIGHTS
by Keras's own file name. Nothing is downloaded: Keras's download function is replaced."""

from __future__ import annotations

import inspect
import re

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format
from keras.src.utils import file_utils

from triptych.data.preprocessing import get_preprocessor
from triptych.errors import InvalidArgumentError, MissingFileError
from triptych.models import MODELS, build, get_spec, weights_origin
from triptych.models.blocks import block_layout, compact_names, select_blocks
from triptych.models.catalog import BlockScheme
from triptych.models.pretrained import backbone_blocks, first_unfrozen_layer, unfreeze, unfrozen_layers

# What keras.applications itself says each family's inputs must be (checked against ours).
KERAS_PREPROCESS = {
    "resnet": keras.applications.resnet.preprocess_input,
    "resnet_v2": keras.applications.resnet_v2.preprocess_input,
    "xception": keras.applications.xception.preprocess_input,
    "inception_v3": keras.applications.inception_v3.preprocess_input,
    "inception_resnet_v2": keras.applications.inception_resnet_v2.preprocess_input,
    "densenet": keras.applications.densenet.preprocess_input,
    "mobilenet": keras.applications.mobilenet.preprocess_input,
    "mobilenet_v2": keras.applications.mobilenet_v2.preprocess_input,
    "mobilenet_v3": keras.applications.mobilenet_v3.preprocess_input,
    "efficientnet": keras.applications.efficientnet.preprocess_input,
    "efficientnet_v2": keras.applications.efficientnet_v2.preprocess_input,
    "convnext": keras.applications.convnext.preprocess_input,
    "nasnet": keras.applications.nasnet.preprocess_input,
    "vgg": keras.applications.vgg16.preprocess_input,
}
KERAS_ENTRIES = sorted(name for name, spec in MODELS.items() if spec.keras_backbone)
# One member per family (the cheapest), built for real.
FAMILY_MEMBERS = ["keras_resnet50", "resnet50v2", "xception", "inceptionv3", "inceptionresnetv2", "densenet121",
                  "mobilenet", "mobilenetv2", "mobilenetv3small", "efficientnetb0", "efficientnetv2b0", "convnexttiny",
                  "nasnetmobile", "vgg16"]
ALL_KERAS_FUNCTIONS = {name for name in dir(keras.applications) if name[0].isupper()}


class _NoDownload(Exception):
    pass


@pytest.fixture
def keras_download(monkeypatch, tmp_path):
    """Replace Keras's download: record the file names asked for, and fail like an offline machine."""
    asked: list[str] = []

    def offline(fname, *args, **kwargs):
        asked.append(fname)
        raise _NoDownload("offline")

    monkeypatch.setattr(file_utils, "get_file", offline)
    monkeypatch.setenv("TRIPTYCH_WEIGHTS", str(tmp_path / "empty-mirror"))
    return asked


def small_shape(name: str) -> tuple[int, int, int]:
    size = get_spec(name).min_input_size
    return (size, size, 3)


def test_the_registry_offers_every_imagenet_family_of_keras_applications():
    offered = {MODELS[name].application for name in KERAS_ENTRIES}
    assert offered == ALL_KERAS_FUNCTIONS  # every keras.applications builder, nothing invented
    assert set(KERAS_PREPROCESS) == {MODELS[name].family for name in KERAS_ENTRIES}
    assert {MODELS[name].family for name in FAMILY_MEMBERS} == set(KERAS_PREPROCESS)  # each family is built
    files = [MODELS[name].imagenet_file for name in KERAS_ENTRIES]
    assert len(set(files)) == len(files)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_model_gets_the_preprocessing_its_weights_expect(name):
    spec = get_spec(name)
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    if spec.keras_backbone or spec.pretrained:
        reference = KERAS_PREPROCESS[spec.family] if spec.keras_backbone else keras.applications.resnet.preprocess_input
        ours = np.asarray(get_preprocessor(spec.preprocessing_for("imagenet"))(pixels))
        np.testing.assert_allclose(ours, np.asarray(reference(pixels.copy())), atol=1e-4)
    if not spec.keras_backbone:  # our from-scratch ResNets: ImageNet mean/std, like torchvision
        ours = np.asarray(get_preprocessor(spec.preprocessing_for(None))(pixels))
        np.testing.assert_allclose(ours, np.asarray(keras.applications.densenet.preprocess_input(pixels.copy())),
                                   atol=1e-5)


@pytest.mark.parametrize("name", FAMILY_MEMBERS)
def test_family_builds_small_and_unfreezes_its_top_blocks(name):
    spec = get_spec(name)
    model = build(name, 3, small_shape(name))
    assert model.name == name and model.output.shape == (None, 3)
    base = model.get_layer("base")
    if spec.preprocessing == "none":  # 0-255 inputs: the model must normalise them itself
        assert any(isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)) for layer in base.layers)
    layout = backbone_blocks(model)
    last_block = list(layout.blocks)[-1]
    opened = unfrozen_layers(model, ["last 1"])
    assert opened == list(layout.blocks[last_block]) and opened[-1] == base.layers[-1].name
    assert unfrozen_layers(model, [last_block]) == opened
    assert first_unfrozen_layer(model, ["last 1"]) == opened[0]
    count = unfreeze(model, ["last 1"])
    trainable = {layer.name for layer in base.layers if layer.trainable}
    with_weights = {n for n in opened if base.get_layer(n).weights}
    batchnorm = {n for n in opened if isinstance(base.get_layer(n), keras.layers.BatchNormalization)}
    assert trainable == set(opened) - batchnorm and count == len(with_weights - batchnorm) > 0


# Families whose Keras builder computes its file name: ask Keras (one small build each).
COMPUTED_FILE_NAMES = ["keras_resnet50", "resnet50v2", "mobilenetv2", "mobilenetv3small", "efficientnetb0",
                       "efficientnetv2b0", "convnexttiny"]


@pytest.mark.parametrize("name", COMPUTED_FILE_NAMES)
def test_imagenet_asks_keras_for_the_catalog_file_name(name, keras_download):
    expected = get_spec(name).imagenet_file.format(rows=224)
    with pytest.raises(MissingFileError, match=rf"no {re.escape(expected)} under \$TRIPTYCH_WEIGHTS"):
        build(name, 3, small_shape(name), weights="imagenet")
    assert keras_download == [expected]


COMPUTED_FAMILIES = {MODELS[n].family for n in COMPUTED_FILE_NAMES} | {"mobilenet"}  # mobilenet: test below


@pytest.mark.parametrize("name", [n for n in KERAS_ENTRIES if MODELS[n].family not in COMPUTED_FAMILIES])
def test_catalog_file_names_are_keras_own(name):
    """The other families spell their file names out in Keras's source (possibly split in two)."""
    spec = get_spec(name)
    module = inspect.getmodule(getattr(keras.applications, spec.application))
    literals = "".join(re.findall(r'"([^"\n]*)"', inspect.getsource(module)))
    assert spec.imagenet_file in literals


def test_mobilenet_file_name_follows_the_input_height(keras_download):
    with pytest.raises(MissingFileError, match="mobilenet_1_0_128_tf_no_top.h5"):
        build("mobilenet", 3, (128, 128, 3), weights="imagenet")
    assert keras_download == ["mobilenet_1_0_128_tf_no_top.h5"]


def save_like_keras(model: keras.Model, path) -> None:
    """A weights file in the legacy HDF5 layout Keras's own downloads use."""
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)


def perturbed_backbone(application: str, shape):
    backbone = getattr(keras.applications, application)(include_top=False, weights=None, input_shape=shape)
    rng = np.random.default_rng(0)
    backbone.set_weights([w + rng.normal(0, 0.01, w.shape).astype(w.dtype) for w in backbone.get_weights()])
    return backbone


def test_imagenet_weights_come_from_the_mirror_under_keras_file_name(keras_download, tmp_path, monkeypatch):
    monkeypatch.setenv("TRIPTYCH_WEIGHTS", str(tmp_path))
    reference = perturbed_backbone("VGG16", (32, 32, 3))
    save_like_keras(reference, tmp_path / get_spec("vgg16").imagenet_file)
    model = build("vgg16", 3, (32, 32, 3), weights="imagenet")
    for ours, theirs in zip(model.get_layer("base").get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    assert keras_download == []  # nothing was downloaded
    assert weights_origin("imagenet", get_spec("vgg16")).startswith(
        f"imagenet ($TRIPTYCH_WEIGHTS/{get_spec('vgg16').imagenet_file}, sha256 ")


def test_imagenet_weights_from_a_keras3_file_in_the_mirror(keras_download, tmp_path, monkeypatch):
    """The shared mirror holds xception_imagenet_notop.weights.h5 (Keras 3 save_weights): the same
    naming, <application>_imagenet_notop.weights.h5, is found for any backbone."""
    monkeypatch.setenv("TRIPTYCH_WEIGHTS", str(tmp_path))
    reference = perturbed_backbone("MobileNet", (32, 32, 3))
    reference.save_weights(str(tmp_path / "mobilenet_imagenet_notop.weights.h5"))
    model = build("mobilenet", 3, (32, 32, 3), weights="imagenet")
    np.testing.assert_array_equal(model.get_layer("base").get_weights()[0], reference.get_weights()[0])
    assert keras_download == []


def test_from_scratch_resnet50_copies_keras_weights_and_wants_caffe_inputs(keras_download, tmp_path, monkeypatch):
    monkeypatch.setenv("TRIPTYCH_WEIGHTS", str(tmp_path))
    reference = perturbed_backbone("ResNet50", (32, 32, 3))
    save_like_keras(reference, tmp_path / get_spec("resnet50").imagenet_file)
    model = build("resnet50", 3, (32, 32, 3), weights="imagenet")
    np.testing.assert_array_equal(model.get_layer("stem_conv").get_weights()[0],
                                  reference.get_layer("conv1_conv").get_weights()[0])
    assert get_spec("resnet50").preprocessing_for("imagenet") == "caffe"
    assert get_spec("resnet50").preprocessing_for(None) == "torch"


def test_wrong_architecture_file_in_the_mirror_is_one_line_naming_both(keras_download, tmp_path, monkeypatch):
    monkeypatch.setenv("TRIPTYCH_WEIGHTS", str(tmp_path))
    wrong = tmp_path / get_spec("vgg16").imagenet_file
    save_like_keras(keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 32, 3)), wrong)
    with pytest.raises(InvalidArgumentError) as caught:
        build("vgg16", 3, (32, 32, 3), weights="imagenet")
    message = str(caught.value)
    assert "\n" not in message and str(wrong) in message and "model vgg16" in message


def test_models_without_imagenet_weights_say_so():
    with pytest.raises(InvalidArgumentError, match="Keras has no ImageNet weights for resnet18"):
        build("resnet18", 3, (32, 32, 3), weights="imagenet")
    with pytest.raises(InvalidArgumentError, match="keras_resnet101 is keras.applications' own"):
        build("resnet101", 3, (32, 32, 3), weights="imagenet")


def test_bad_arguments_name_the_python_argument():
    with pytest.raises(InvalidArgumentError, match=r"input_shape=\(32, 32, 3\): xception .* at least 71"):
        build("xception", 3, (32, 32, 3))
    with pytest.raises(MissingFileError, match="weights='nope.h5' for vgg16: no such file"):
        build("vgg16", 3, (32, 32, 3), weights="nope.h5")
    with pytest.raises(InvalidArgumentError, match="num_classes must be at least 2"):
        build("vgg16", 1, (32, 32, 3))


def test_unknown_block_lists_the_valid_ones_and_last_n_is_bounded():
    model = build("vgg16", 3, (32, 32, 3))
    with pytest.raises(InvalidArgumentError, match=r"vgg16 has no block 'block9'; its blocks are block1\.\.5"):
        unfreeze(model, ["block9"])
    with pytest.raises(InvalidArgumentError, match="N from 1 to 5"):
        unfreeze(model, ["last 6"])
    assert unfrozen_layers(model, ["last 2"]) == unfrozen_layers(model, ["block4", "block5"])


LAYERS = ["input", "stem_conv", "block1a_conv", "add", "block1b_conv", "block2a_conv", "block2a_bn", "top_conv"]


def test_block_layout_puts_unnamed_layers_in_the_next_or_previous_block_and_the_tail_in_the_last():
    layout = block_layout(LAYERS, BlockScheme(r"^(block\d+[a-z])_"))
    assert layout.stem == ("input", "stem_conv")
    assert layout.blocks == {
        "block1a": ("block1a_conv",),
        "block1b": ("add", "block1b_conv"),
        "block2a": ("block2a_conv", "block2a_bn", "top_conv"),
    }
    previous = block_layout(LAYERS, BlockScheme(r"^(block\d+[a-z])_", unnamed="previous"))
    assert previous.blocks["block1a"] == ("block1a_conv", "add") and previous.blocks["block1b"] == ("block1b_conv",)


def test_block_prefixes_name_several_blocks_but_not_longer_numbers():
    layout = block_layout(["x", "block1_a", "block12_a", "block2a_a", "block2b_a"], BlockScheme(r"^(block\d+[a-z]?)_"))
    assert select_blocks(layout, ["block1"], "m") == ["block1"]  # not block12
    assert select_blocks(layout, ["block2"], "m") == ["block2a", "block2b"]
    assert select_blocks(layout, ["LAST 2"], "m") == ["block2a", "block2b"]


def test_compact_names():
    names = ["conv2_block1", "conv2_block2", "conv2_block3", "conv3_block1", "block7a", "block7b", "top"]
    assert compact_names(names) == "conv2_block1..3, conv3_block1, block7a..b, top"
