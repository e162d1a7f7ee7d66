"""Per-architecture input normalisation, applied in the tf.data pipeline.

Each registered model names one of these; pretrained models must get exactly the
normalisation their weights were trained with, or they silently lose accuracy.
The functions are Keras's own ``imagenet_utils.preprocess_input`` modes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from keras.applications import imagenet_utils


def _mode(mode: str) -> Callable:
    def preprocess(images):
        if isinstance(images, np.ndarray):
            # Keras normalises NumPy arrays in place; never modify the caller's array.
            images = images.astype("float32", copy=True)
        return imagenet_utils.preprocess_input(images, data_format="channels_last", mode=mode)

    preprocess.__name__ = f"preprocess_{mode}"
    return preprocess


# torch: [0,1] then ImageNet mean/std (DenseNet, our ResNets); tf: [-1, 1] (Xception); caffe: BGR mean-subtracted.
PREPROCESSORS: dict[str, Callable] = {mode: _mode(mode) for mode in ("torch", "tf", "caffe")}


def get_preprocessor(name: str) -> Callable:
    return PREPROCESSORS[name]
