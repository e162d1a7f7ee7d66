"""Per-architecture input normalisation, applied in the tf.data pipeline.

Each registered model names one of these (``ModelSpec.preprocessing_for(weights)``);
pretrained models must get exactly the normalisation their weights were trained with, or they
silently lose accuracy. The functions are Keras's own ``imagenet_utils.preprocess_input``
modes, plus ``none`` for the keras.applications models that normalise inside themselves
(EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3: ``include_preprocessing``), which take
0-255 pixels; normalising them here too would normalise twice.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from keras import ops
from keras.applications import imagenet_utils

from triptych.errors import InvalidArgumentError


def _mode(mode: str) -> Callable:
    def preprocess(images):
        if isinstance(images, np.ndarray):
            # Keras normalises NumPy arrays in place; never modify the caller's array.
            images = images.astype("float32", copy=True)
        return imagenet_utils.preprocess_input(images, data_format="channels_last", mode=mode)

    preprocess.__name__ = f"preprocess_{mode}"
    return preprocess


def _unchanged(images):
    """0-255 pixels as float32, for models that normalise inside themselves."""
    if isinstance(images, np.ndarray):
        return images.astype("float32", copy=True)
    return ops.cast(images, "float32")


# torch: [0,1] then ImageNet mean/std (DenseNet, our ResNets); tf: [-1, 1] (Xception, Inception,
# MobileNet V1/V2, NASNet, ResNetV2); caffe: BGR mean-subtracted (keras.applications ResNet, VGG).
PREPROCESSORS: dict[str, Callable] = {
    **{mode: _mode(mode) for mode in ("torch", "tf", "caffe")},
    "none": _unchanged,
}


def get_preprocessor(name: str) -> Callable:
    try:
        return PREPROCESSORS[name]
    except KeyError:
        raise InvalidArgumentError(f"unknown preprocessing {name!r}; valid: {', '.join(PREPROCESSORS)}") from None
