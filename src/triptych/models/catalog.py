"""Every architecture triptych can build, as data: names, sizes, preprocessing, weights, blocks.

Standard library only, so listing the models (``triptych models``, the report) never imports
TensorFlow. Building is :func:`triptych.models.registry.build`'s job.

Names: ``resnet18`` ... ``resnet152`` are triptych's own from-scratch ResNets
(:mod:`triptych.models.resnet`). Every other entry is a ``keras.applications`` backbone with
our GAP/Dropout/Dense head (:mod:`triptych.models.pretrained`), named after its Keras function
lower-cased (``EfficientNetV2B0`` -> ``efficientnetv2b0``); the three names that would collide
with our ResNets take a ``keras_`` prefix (``keras_resnet50``, ``keras_resnet101``,
``keras_resnet152``).
"""

from __future__ import annotations

from dataclasses import dataclass

RESNET_OPTIONS = ("stem", "dropout", "zero_init_residual", "keras_compat", "fused_bn")
HEAD_OPTIONS = ("dropout", "l2")


@dataclass(frozen=True)
class BlockScheme:
    """How a backbone's layer names show its blocks (see :mod:`triptych.models.blocks`).

    ``pattern`` matches the layers that name their block; ``name`` turns the match into the
    block's name (``re.Match.expand``), ``\\1`` unless the layer names need a prefix.
    ``unnamed``: whether Keras's auto-named layers belong to the ``next`` named block (branches
    that a named concatenation closes) or the ``previous`` one (Xception's residual additions)."""

    pattern: str
    name: str = r"\1"
    unnamed: str = "next"


@dataclass(frozen=True)
class Family:
    """What the members of one keras.applications family share."""

    preprocessing: str  # what keras.applications.<module>.preprocess_input does (see data/preprocessing.py)
    min_input_size: int  # smallest height/width the Keras builder accepts
    blocks: BlockScheme


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of triptych needs to know about an architecture."""

    name: str
    family: str  # its card in cards.yaml (and its diagram, where one exists)
    description: str
    default_input_shape: tuple[int, int, int]
    preprocessing: str  # a key of triptych.data.preprocessing.PREPROCESSORS
    options: tuple[str, ...]
    # The keras.applications function whose ImageNet weights ``weights="imagenet"`` loads
    # (None: no ImageNet weights), and the no-top file name Keras downloads for it
    # ("{rows}": the input height, for the MobileNets whose file depends on it).
    application: str | None = None
    imagenet_file: str | None = None
    keras_backbone: bool = False  # the model is keras.applications.<application> + our head
    imagenet_preprocessing: str | None = None  # only where ImageNet weights need another one
    min_input_size: int = 1  # keras.applications backbones: their family's minimum
    blocks: BlockScheme | None = None  # named blocks, for unfreezing (keras backbones)

    @property
    def pretrained(self) -> tuple[str, ...]:
        """Weight names :func:`~triptych.models.registry.build` understands besides a file path."""
        return ("imagenet",) if self.application else ()

    def preprocessing_for(self, weights: str | None) -> str:
        """The preprocessing a model built with ``weights`` must be fed."""
        if weights == "imagenet" and self.imagenet_preprocessing:
            return self.imagenet_preprocessing
        return self.preprocessing


_KERAS_NOTOP = "{}_weights_tf_dim_ordering_tf_kernels_notop.h5"
# The block names users see in model.summary(): Xception block14, ResNet conv5_block3,
# DenseNet conv5_block16, EfficientNet block7a, ConvNeXt stage_3_block_2, NASNet cell_12, ...
_CONV_BLOCKS = BlockScheme(r"^(conv\d+_block\d+)_")
_BLOCK_N = BlockScheme(r"^(block\d+)_")
_EFFICIENT_BLOCKS = BlockScheme(r"^(block\d+[a-z])_")

FAMILIES: dict[str, Family] = {
    "resnet": Family("caffe", 32, _CONV_BLOCKS),
    "resnet_v2": Family("tf", 32, _CONV_BLOCKS),
    "xception": Family("tf", 71, BlockScheme(r"^(block\d+)_", unnamed="previous")),
    "inception_v3": Family("tf", 75, BlockScheme(r"^(mixed\d+)$")),
    "inception_resnet_v2": Family("tf", 75, BlockScheme(r"^(block(?:35|17|8)_\d+(?=_)|mixed_\d[a-z]$)")),
    "densenet": Family("torch", 32, _CONV_BLOCKS),
    "mobilenet": Family("tf", 32, BlockScheme(r"^(conv_pw_\d+)(?:_|$)")),
    "mobilenet_v2": Family("tf", 32, BlockScheme(r"^(expanded_conv|block_\d+)_")),
    # The next four normalise inside the model (include_preprocessing): they take 0-255 pixels.
    "mobilenet_v3": Family("none", 32, BlockScheme(r"^(expanded_conv(?:_\d+)?)_")),
    "efficientnet": Family("none", 32, _EFFICIENT_BLOCKS),
    "efficientnet_v2": Family("none", 32, _EFFICIENT_BLOCKS),
    "convnext": Family("none", 32, BlockScheme(r"^\w+?_(stage_\d+_block_\d+)_")),
    "nasnet": Family("tf", 32, BlockScheme(r"^(?:adjust|normal|reduction|separable)_.*?_((?:stem_|reduce_)?\d+)$",
                                           r"cell_\1")),
    "vgg": Family("caffe", 32, _BLOCK_N),
}

# (registry name, keras.applications function, family, native size, Keras's no-top weights file)
KERAS_BACKBONES: tuple[tuple[str, str, str, int, str], ...] = (
    ("keras_resnet50", "ResNet50", "resnet", 224, _KERAS_NOTOP.format("resnet50")),
    ("keras_resnet101", "ResNet101", "resnet", 224, _KERAS_NOTOP.format("resnet101")),
    ("keras_resnet152", "ResNet152", "resnet", 224, _KERAS_NOTOP.format("resnet152")),
    ("resnet50v2", "ResNet50V2", "resnet_v2", 224, _KERAS_NOTOP.format("resnet50v2")),
    ("resnet101v2", "ResNet101V2", "resnet_v2", 224, _KERAS_NOTOP.format("resnet101v2")),
    ("resnet152v2", "ResNet152V2", "resnet_v2", 224, _KERAS_NOTOP.format("resnet152v2")),
    ("xception", "Xception", "xception", 299, _KERAS_NOTOP.format("xception")),
    ("inceptionv3", "InceptionV3", "inception_v3", 299, _KERAS_NOTOP.format("inception_v3")),
    ("inceptionresnetv2", "InceptionResNetV2", "inception_resnet_v2", 299, _KERAS_NOTOP.format("inception_resnet_v2")),
    ("densenet121", "DenseNet121", "densenet", 224, _KERAS_NOTOP.format("densenet121")),
    ("densenet169", "DenseNet169", "densenet", 224, _KERAS_NOTOP.format("densenet169")),
    ("densenet201", "DenseNet201", "densenet", 224, _KERAS_NOTOP.format("densenet201")),
    ("mobilenet", "MobileNet", "mobilenet", 224, "mobilenet_1_0_{rows}_tf_no_top.h5"),
    ("mobilenetv2", "MobileNetV2", "mobilenet_v2", 224,
     "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"),
    ("mobilenetv3small", "MobileNetV3Small", "mobilenet_v3", 224,
     "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
    ("mobilenetv3large", "MobileNetV3Large", "mobilenet_v3", 224,
     "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"),
    *(
        (f"efficientnet{v}", f"EfficientNet{v.upper()}", "efficientnet", size, f"efficientnet{v}_notop.h5")
        for v, size in (("b0", 224), ("b1", 240), ("b2", 260), ("b3", 300), ("b4", 380), ("b5", 456),
                        ("b6", 528), ("b7", 600))
    ),
    *(
        (f"efficientnetv2{v}", f"EfficientNetV2{v.upper()}", "efficientnet_v2", size, f"efficientnetv2-{v}_notop.h5")
        for v, size in (("b0", 224), ("b1", 240), ("b2", 260), ("b3", 300), ("s", 384), ("m", 480), ("l", 480))
    ),
    *(
        (f"convnext{v.lower()}", f"ConvNeXt{v}", "convnext", 224, f"convnext_{v.lower()}_notop.h5")
        for v in ("Tiny", "Small", "Base", "Large", "XLarge")
    ),
    ("nasnetmobile", "NASNetMobile", "nasnet", 224, "nasnet_mobile_no_top.h5"),
    ("nasnetlarge", "NASNetLarge", "nasnet", 331, "nasnet_large_no_top.h5"),
    ("vgg16", "VGG16", "vgg", 224, _KERAS_NOTOP.format("vgg16")),
    ("vgg19", "VGG19", "vgg", 224, _KERAS_NOTOP.format("vgg19")),
)


def _keras_spec(name: str, application: str, family_name: str, size: int, imagenet_file: str) -> ModelSpec:
    family = FAMILIES[family_name]
    return ModelSpec(
        name=name,
        family=family_name,
        description=f"{application} (keras.applications) + GAP/Dropout/Dense head",
        default_input_shape=(size, size, 3),
        preprocessing=family.preprocessing,
        options=HEAD_OPTIONS,
        application=application,
        imagenet_file=imagenet_file,
        keras_backbone=True,
        min_input_size=family.min_input_size,
        blocks=family.blocks,
    )


def _own_resnet_spec(depth: str, kind: str) -> ModelSpec:
    # Only ResNet-50 has ImageNet weights: keras.applications.ResNet50's, copied layer for layer
    # (keras_compat), which expect Caffe-style inputs. Random or local weights keep torchvision's.
    imagenet = depth == "resnet50"
    return ModelSpec(
        name=depth,
        family="resnet",
        description=f"ResNet-{depth[6:]} from scratch ({kind} blocks, v1.5)",
        default_input_shape=(224, 224, 3),
        preprocessing="torch",
        options=RESNET_OPTIONS,
        application="ResNet50" if imagenet else None,
        imagenet_file=_KERAS_NOTOP.format("resnet50") if imagenet else None,
        imagenet_preprocessing="caffe" if imagenet else None,
    )


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        *(_own_resnet_spec(depth, kind) for depth, kind in (
            ("resnet18", "basic"), ("resnet34", "basic"), ("resnet50", "bottleneck"),
            ("resnet101", "bottleneck"), ("resnet152", "bottleneck"))),
        *(_keras_spec(*row) for row in KERAS_BACKBONES),
    )
}
