"""keras.applications backbones with a classification head, and unfreezing their top blocks.

The head is GlobalAveragePooling2D -> Dropout -> Dense softmax (optionally L2-regularised:
the seed's "regularised head"). The backbone is a nested model named ``base``. When it
starts from pretrained weights it is called with ``training=False``, so its BatchNorm layers
always use their ImageNet moving statistics, also after they are unfrozen for fine-tuning:
the frozen-BN pitfall (keras issues 9214, 11590) cannot happen.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
from keras import layers

from triptych.errors import InvalidArgumentError
from triptych.models.blocks import BlockLayout, block_layout, select_blocks
from triptych.models.catalog import MODELS, ModelSpec
from triptych.models.weights import imagenet_backbone, load_weights_file

# Registry name -> keras.applications builder (a seam tests replace with a tiny backbone).
BACKBONES = {
    spec.name: getattr(keras.applications, spec.application) for spec in MODELS.values() if spec.keras_backbone
}


def build_pretrained(
    spec: ModelSpec,
    num_classes: int,
    input_shape: tuple[int, int, int],
    weights: str | None,
    *,
    dropout: float = 0.2,
    l2: float = 0.0,
) -> keras.Model:
    """Backbone (``weights``: ``imagenet``, a weights file, or ``None`` for random) plus head."""
    base = _backbone(spec, input_shape, weights)
    inputs = keras.Input(shape=input_shape, name="image")
    # Pretrained: BN in inference mode for good. Random: BN must learn its statistics.
    features = base(inputs, training=False) if weights else base(inputs)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(features)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    regularizer = keras.regularizers.L2(l2) if l2 else None
    # float32 even under mixed precision: a 16-bit softmax saturates and its log underflows.
    outputs = layers.Dense(
        num_classes, activation="softmax", kernel_regularizer=regularizer, dtype="float32", name="predictions"
    )(x)
    return keras.Model(inputs, outputs, name=spec.name)


def _backbone(spec: ModelSpec, input_shape, weights: str | None) -> keras.Model:
    make = BACKBONES[spec.name]
    if weights == "imagenet":
        base = imagenet_backbone(spec, make, input_shape)
    else:
        base = make(include_top=False, weights=None, input_shape=input_shape)
        if weights:
            load_weights_file(base, Path(weights).expanduser(), spec.name)
        else:
            _faster_batchnorm_statistics(base)
    base.name = "base"
    return base


def _faster_batchnorm_statistics(base: keras.Model) -> None:
    """From random weights, BatchNorm's moving statistics must be learnt: momentum 0.9 (PyTorch's
    default, as in our ResNets) lets them catch up within a short run, where Keras's 0.99 leaves
    validation on near-initial statistics for hundreds of steps."""
    for layer in base.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = 0.9


def backbone_blocks(model: keras.Model) -> BlockLayout:
    """The named blocks of the backbone of a built registry model (``model.name``)."""
    spec = MODELS.get(model.name)
    if spec is None or spec.blocks is None or "base" not in {layer.name for layer in model.layers}:
        raise InvalidArgumentError(
            f"model: {model.name!r} is not a registry model with a keras.applications backbone, so it has no "
            "blocks to unfreeze"
        )
    base = model.get_layer("base")
    return block_layout([layer.name for layer in base.layers], spec.blocks)


def unfrozen_layers(
    model: keras.Model, blocks: Sequence[str] | None = None, last_layers: int | None = None
) -> list[str]:
    """The backbone layers :func:`unfreeze` opens, in graph order (BatchNorm included, though it
    stays frozen). The first is where a frozen trunk ends: everything before it never changes
    during fine-tuning (layers after it may still read trunk outputs, e.g. residual shortcuts)."""
    layout = backbone_blocks(model)
    names = [layer.name for layer in model.get_layer("base").layers]
    chosen = set(layout.layers_of(select_blocks(layout, blocks or [], model.name)))
    if last_layers:
        if last_layers < 1:
            raise InvalidArgumentError(f"last_layers must be at least 1, got {last_layers}")
        chosen.update(names[-last_layers:])
    return [name for name in names if name in chosen]


def first_unfrozen_layer(
    model: keras.Model, blocks: Sequence[str] | None = None, last_layers: int | None = None
) -> str:
    """The name of the first backbone layer :func:`unfreeze` opens (the trunk/top split point)."""
    opened = unfrozen_layers(model, blocks, last_layers)
    if not opened:
        raise InvalidArgumentError("blocks or last_layers: nothing to unfreeze; name a block, 'last N', or a count")
    return opened[0]


def unfreeze(model: keras.Model, blocks: Sequence[str] | None = None, last_layers: int | None = None) -> int:
    """Make the named backbone blocks trainable (``block14``, ``conv5_block16``, a prefix such as
    ``conv5``, or ``"last N"``) and/or the last ``last_layers`` layers; BatchNorm layers stay
    frozen. Returns how many layers with weights became trainable."""
    opened = set(unfrozen_layers(model, blocks, last_layers))
    base = model.get_layer("base")
    base.trainable = True
    count = 0
    for layer in base.layers:
        layer.trainable = layer.name in opened and not isinstance(layer, layers.BatchNormalization)
        count += layer.trainable and bool(layer.weights)
    return count
