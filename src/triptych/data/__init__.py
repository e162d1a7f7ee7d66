"""Datasets (CIFAR-10, image folders), splits and tf.data pipelines.

``triptych.data.sources`` and ``splits`` do not import TensorFlow; ``pipeline`` does.
"""

from triptych.data.sources import DataSource, Examples, fingerprint, load_cifar10, load_folder
from triptych.data.splits import Splits, make_splits, split_table

__all__ = [
    "DataSource",
    "Examples",
    "Splits",
    "fingerprint",
    "load_cifar10",
    "load_folder",
    "make_splits",
    "split_table",
]
