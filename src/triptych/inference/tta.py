"""Test-time augmentation: class probabilities averaged over transformed copies of each image.

``flip`` averages each image's probabilities with those of its horizontal mirror image -- the
same flip training may use (``data.augment.flip``), so the mirror image is as plausible an input.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from triptych.errors import InvalidArgumentError

TTA_MODES = ("none", "flip")

Predict = Callable[[tf.data.Dataset], np.ndarray]


def predict_with_tta(predict: Predict, dataset: tf.data.Dataset, tta: str = "none") -> np.ndarray:
    """``predict(dataset)`` (class probabilities of ``(images, ...)`` batches, in order), or with
    ``tta="flip"`` its mean with ``predict`` of the same batches mirrored left to right."""
    if tta not in TTA_MODES:
        raise InvalidArgumentError(f"tta must be one of {', '.join(TTA_MODES)}; got {tta!r}")
    probabilities = predict(dataset)
    if tta == "none":
        return probabilities
    # Mirroring commutes with the per-pixel preprocessing already applied to the batches.
    mirrored = dataset.map(lambda images, *rest: (tf.image.flip_left_right(images), *rest))
    return (probabilities + predict(mirrored)) / 2
