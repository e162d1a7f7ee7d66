"""ImageNet backbones from keras.applications (Xception, DenseNet-121) with a classification head.

The head is GlobalAveragePooling2D -> Dropout -> Dense softmax (optionally L2-regularised:
the seed's "regularised head"). The backbone is a nested model named ``base``. When it
starts from pretrained weights it is called with ``training=False``, so its BatchNorm layers
always use their ImageNet moving statistics, also after they are unfrozen for fine-tuning:
the frozen-BN pitfall (keras issues 9214, 11590) cannot happen.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from triptych.errors import TriptychError

BACKBONES = {
    "xception": keras.applications.Xception,
    "densenet121": keras.applications.DenseNet121,
}


def build_pretrained(
    arch: str,
    num_classes: int,
    input_shape: tuple[int, int, int],
    weights: str | None,
    *,
    dropout: float = 0.2,
    l2: float = 0.0,
) -> keras.Model:
    """Backbone (``weights``: ``imagenet``, a weights file, or ``None`` for random) plus head."""
    base = _backbone(arch, input_shape, weights)
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
    return keras.Model(inputs, outputs, name=arch)


def _backbone(arch: str, input_shape, weights: str | None) -> keras.Model:
    make = BACKBONES[arch]
    if weights == "imagenet":
        try:
            base = make(include_top=False, weights="imagenet", input_shape=input_shape)
        except Exception as err:  # download failures come as many exception types
            raise TriptychError(
                f"could not get ImageNet weights for {arch} ({err.__class__.__name__}); offline, pass a local "
                "weights file (weights: path/to/file.weights.h5) or weights: null to train from random"
            ) from err
    else:
        base = make(include_top=False, weights=None, input_shape=input_shape)
        if not weights:
            _faster_batchnorm_statistics(base)
        if weights:
            from triptych.models.registry import load_weights_file

            load_weights_file(base, Path(weights).expanduser())
    base.name = "base"
    return base


def _faster_batchnorm_statistics(base: keras.Model) -> None:
    """From random weights, BatchNorm's moving statistics must be learnt: momentum 0.9 (PyTorch's
    default, as in our ResNets) lets them catch up within a short run, where Keras's 0.99 leaves
    validation on near-initial statistics for hundreds of steps."""
    for layer in base.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = 0.9


def head_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers after the backbone (what phase 1 trains)."""
    return [model.get_layer(name) for name in ("avg_pool", "head_dropout", "predictions")]


def unfreeze(model: keras.Model, blocks: list[str] | None = None, last_layers: int | None = None) -> int:
    """Make the last backbone blocks trainable (by name prefix, e.g. ``block14`` or
    ``conv5_block16``, or the last N layers); BatchNorm layers stay frozen. Returns how many
    layers became trainable."""
    base = model.get_layer("base")
    base.trainable = True
    chosen: set[str] = set()
    names = [layer.name for layer in base.layers]
    if blocks:
        for block in blocks:
            matches = [n for n in names if n == block or n.startswith(block + "_")]
            if not matches:
                raise TriptychError(
                    f"no layer of {model.name} belongs to block {block!r}; blocks look like "
                    f"{', '.join(sorted(block_names(base))[-4:])}"
                )
            chosen.update(matches)
    if last_layers:
        chosen.update(names[-last_layers:])
    count = 0
    for layer in base.layers:
        layer.trainable = layer.name in chosen and not isinstance(layer, layers.BatchNormalization)
        count += layer.trainable and bool(layer.weights)
    return count


def block_names(base: keras.Model) -> set[str]:
    """Block prefixes users can name: ``block14`` (Xception), ``conv5_block16`` (DenseNet)."""
    prefixes = set()
    for layer in base.layers:
        parts = layer.name.split("_")
        if parts[0].startswith("block"):
            prefixes.add(parts[0])
        elif len(parts) > 1 and parts[0].startswith("conv") and parts[1].startswith("block"):
            prefixes.add(f"{parts[0]}_{parts[1]}")
    return prefixes
