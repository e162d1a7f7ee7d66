"""ResNet-18/34/50/101/152 written from plain Keras 3 layers.

He et al., "Deep Residual Learning for Image Recognition" (2015). The default is the
"v1.5" variant that torchvision ships: no conv bias before BatchNorm and, in bottleneck
blocks, the stride-2 downsampling on the 3x3 conv rather than on the first 1x1 conv.
``keras_compat=True`` reproduces ``keras.applications.ResNet50`` exactly instead (conv
biases, stride on the first 1x1 conv, BN epsilon 1.001e-5), so that its weights can be
copied over one for one -- our proof that this is the real ResNet-50.
``fused_bn=True`` builds the BatchNorm layers as :class:`triptych.models.fused_batchnorm.BatchNormalization`
(TensorFlow's fused kernel in training; same weights and config); the registry's option
``fused_bn`` defaults to ``auto``: fused where it is measured faster on this machine.

Layer names follow the stages as users count them: ``stem_conv``, ``stage2_block3_conv2``,
``stage2_block1_shortcut_conv``, ... Stage 1 keeps the stem's resolution, stages 2-4
start with a stride-2 block.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers

from triptych.models.catalog import ModelSpec
from triptych.models.fused_batchnorm import AUTO, batch_normalization_layer, resolve_fused_bn
from triptych.models.weights import imagenet_backbone, load_weights_file

STAGE_FILTERS = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4

# Block counts per stage (the paper's Table 1).
DEPTHS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
STEMS = ("imagenet", "cifar")


@dataclass(frozen=True)
class _Style:
    """How convolutions are built: v1.5 (default) or exactly as keras.applications."""

    use_bias: bool
    stride_on_first_1x1: bool
    bn_epsilon: float
    bn_momentum: float
    zero_init_residual: bool
    fused_bn: bool


def ResNet(
    depth: str,
    num_classes: int,
    input_shape: tuple[int, int, int] = (224, 224, 3),
    *,
    stem: str = "imagenet",
    dropout: float = 0.0,
    zero_init_residual: bool = False,
    keras_compat: bool = False,
    fused_bn: bool = False,
    include_top: bool = True,
    name: str | None = None,
) -> keras.Model:
    """Build a ResNet as a functional Keras model.

    Args:
        depth: one of ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``, ``resnet152``.
        num_classes: size of the softmax classifier.
        input_shape: channels-last ``(height, width, 3)``.
        stem: ``imagenet`` (7x7/2 conv, BN, ReLU, 3x3/2 max-pool) or ``cifar``
            (3x3/1 conv, BN, ReLU, no pool) for 32x32 inputs.
        dropout: dropout rate before the classifier (0 disables it).
        zero_init_residual: start the last BN of every block with gamma = 0, so each
            residual block begins as the identity (Goyal et al., 2017).
        keras_compat: match ``keras.applications.ResNet50`` layer for layer (resnet50 only).
        fused_bn: BatchNorm through TensorFlow's fused kernel in training (same weights).
        include_top: add global average pooling and the dense softmax classifier.
    """
    if depth not in DEPTHS:
        raise ValueError(f"unknown ResNet depth {depth!r}; expected one of {sorted(DEPTHS)}")
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; expected one of {STEMS}")
    block_kind, blocks_per_stage = DEPTHS[depth]
    if keras_compat and (depth != "resnet50" or stem != "imagenet"):
        raise ValueError("keras_compat=True reproduces keras.applications.ResNet50: use it with resnet50 and stem 'imagenet'")
    style = _Style(
        use_bias=keras_compat,
        stride_on_first_1x1=keras_compat,
        bn_epsilon=1.001e-5 if keras_compat else 1e-5,
        # 0.9 (PyTorch's 0.1) lets the moving statistics catch up within short runs; Keras's 0.99
        # leaves validation on near-initial statistics for the first few hundred steps.
        bn_momentum=0.99 if keras_compat else 0.9,
        zero_init_residual=zero_init_residual,
        fused_bn=fused_bn,
    )

    inputs = keras.Input(shape=input_shape, name="image")
    x = _stem(inputs, stem, style)
    for stage_index, (filters, num_blocks) in enumerate(zip(STAGE_FILTERS, blocks_per_stage), start=1):
        for block_index in range(1, num_blocks + 1):
            stride = 2 if (stage_index > 1 and block_index == 1) else 1
            prefix = f"stage{stage_index}_block{block_index}"
            if block_kind == "basic":
                x = _basic_block(x, filters, stride, prefix, style)
            else:
                x = _bottleneck_block(x, filters, stride, prefix, style)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name="head_dropout")(x)
        # float32 even under mixed precision: a 16-bit softmax saturates and its log underflows.
        x = layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, x, name=name or depth)


def build_resnet(
    spec: ModelSpec, num_classes: int, input_shape: tuple[int, int, int], weights: str | None, **options
) -> keras.Model:
    """The registry's builder: ``weights`` ``None`` (random), ``"imagenet"`` (resnet50: a copy of
    keras.applications.ResNet50's weights, see :func:`_imagenet_resnet50`) or a weights file.
    ``fused_bn``: ``auto`` (default; see :func:`resolve_fused_bn`), ``True`` or ``False``."""
    options = {**options, "fused_bn": resolve_fused_bn(options.get("fused_bn", AUTO)).fused}
    if weights == "imagenet":
        return _imagenet_resnet50(spec, num_classes, input_shape, **options)
    model = ResNet(spec.name, num_classes, input_shape, **options)
    if weights:
        load_weights_file(model, Path(weights).expanduser(), spec.name)
    return model


def _imagenet_resnet50(spec: ModelSpec, num_classes: int, input_shape, **options) -> keras.Model:
    """ResNet-50 with ``keras_compat`` is keras.applications.ResNet50 layer for layer: copy its
    ImageNet weights (which expect "caffe" preprocessing: ``spec.preprocessing_for("imagenet")``)."""
    options = {**options, "keras_compat": True}
    reference = imagenet_backbone(spec, keras.applications.ResNet50, input_shape)
    model = ResNet(spec.name, num_classes, input_shape, **options)
    backbone = ResNet(spec.name, num_classes, input_shape, include_top=False, **options)
    backbone.set_weights(reference.get_weights())
    for layer in backbone.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    return model


def _conv(x, filters: int, kernel: int, stride: int, name: str, style: _Style):
    """Conv2D with explicit symmetric zero padding when strided.

    TensorFlow's ``padding="same"`` pads stride-2 convs asymmetrically (more at the bottom
    right); explicit padding matches the paper, torchvision and keras.applications.
    """
    if stride > 1 and kernel > 1:
        x = layers.ZeroPadding2D(padding=kernel // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding=padding,
        use_bias=style.use_bias,
        kernel_initializer="he_normal",
        name=name,
    )(x)


def _bn(x, name: str, style: _Style, zero_gamma: bool = False):
    return batch_normalization_layer(style.fused_bn)(
        axis=-1,
        epsilon=style.bn_epsilon,
        momentum=style.bn_momentum,
        gamma_initializer="zeros" if zero_gamma else "ones",
        name=name,
    )(x)


def _stem(x, stem: str, style: _Style):
    if stem == "cifar":
        x = _conv(x, 64, 3, 1, "stem_conv", style)
        x = _bn(x, "stem_bn", style)
        return layers.ReLU(name="stem_relu")(x)
    x = _conv(x, 64, 7, 2, "stem_conv", style)
    x = _bn(x, "stem_bn", style)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.ZeroPadding2D(padding=1, name="stem_pool_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)


def _shortcut(x, out_channels: int, stride: int, prefix: str, style: _Style):
    """Identity when the shape is unchanged, else a 1x1 projection conv + BN."""
    if stride == 1 and x.shape[-1] == out_channels:
        return x
    shortcut = layers.Conv2D(
        out_channels,
        1,
        strides=stride,
        use_bias=style.use_bias,
        kernel_initializer="he_normal",
        name=f"{prefix}_shortcut_conv",
    )(x)
    return _bn(shortcut, f"{prefix}_shortcut_bn", style)


def _basic_block(x, filters: int, stride: int, prefix: str, style: _Style):
    """3x3 -> 3x3 (ResNet-18/34)."""
    shortcut = _shortcut(x, filters, stride, prefix, style)
    y = _conv(x, filters, 3, stride, f"{prefix}_conv1", style)
    y = _bn(y, f"{prefix}_bn1", style)
    y = layers.ReLU(name=f"{prefix}_relu1")(y)
    y = _conv(y, filters, 3, 1, f"{prefix}_conv2", style)
    y = _bn(y, f"{prefix}_bn2", style, zero_gamma=style.zero_init_residual)
    y = layers.Add(name=f"{prefix}_add")([shortcut, y])
    return layers.ReLU(name=f"{prefix}_out")(y)


def _bottleneck_block(x, filters: int, stride: int, prefix: str, style: _Style):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4) (ResNet-50/101/152)."""
    out_channels = filters * BOTTLENECK_EXPANSION
    # The shortcut is built first so that the weight order equals keras.applications'.
    shortcut = _shortcut(x, out_channels, stride, prefix, style)
    first_stride, middle_stride = (stride, 1) if style.stride_on_first_1x1 else (1, stride)
    y = _conv(x, filters, 1, first_stride, f"{prefix}_conv1", style)
    y = _bn(y, f"{prefix}_bn1", style)
    y = layers.ReLU(name=f"{prefix}_relu1")(y)
    if style.stride_on_first_1x1:
        # keras.applications pads the 3x3 conv with "same" (it is never strided there).
        y = layers.Conv2D(filters, 3, padding="same", use_bias=True, name=f"{prefix}_conv2")(y)
    else:
        y = _conv(y, filters, 3, middle_stride, f"{prefix}_conv2", style)
    y = _bn(y, f"{prefix}_bn2", style)
    y = layers.ReLU(name=f"{prefix}_relu2")(y)
    y = _conv(y, out_channels, 1, 1, f"{prefix}_conv3", style)
    y = _bn(y, f"{prefix}_bn3", style, zero_gamma=style.zero_init_residual)
    y = layers.Add(name=f"{prefix}_add")([shortcut, y])
    return layers.ReLU(name=f"{prefix}_out")(y)
