"""tf.data input pipelines: decode, resize, cache, shuffle, augment, normalise, batch, prefetch.

Images are decoded in parallel from disk (or sliced from in-memory arrays). Decoded,
resized images are cached in memory when they fit a budget, so that later epochs skip
the JPEG decode; large datasets keep streaming from disk.

:func:`undecodable` decodes files exactly as training does, to find the ones that would stop
a run in its middle (``triptych.data.sources.check_images`` calls it before training).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from triptych.data.sources import Examples

AUTOTUNE = tf.data.AUTOTUNE
CACHE_BUDGET_BYTES = 1 << 30  # decoded float32 images kept in RAM at most (1 GiB)


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation; ``crop_padding`` pixels of zero padding then a random crop."""

    crop_padding: int = 0
    flip: bool = False

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.flip


def make_dataset(
    examples: Examples,
    num_classes: int,
    image_size: int,
    batch_size: int,
    preprocess: Callable,
    *,
    training: bool,
    seed: int,
    augment: Augment = Augment(),
    cache: bool | None = None,
) -> tf.data.Dataset:
    """Batches of ``(preprocessed float32 images, one-hot float32 labels)``.

    ``cache=None`` caches decoded images in memory when they fit ``CACHE_BUDGET_BYTES``.
    Evaluation datasets keep their order (predictions line up with ``examples.ids``).
    """
    cache = should_cache(len(examples), image_size, cache)
    labels = tf.one_hot(examples.labels, num_classes, dtype=tf.float32)
    if examples.is_files:
        ds = tf.data.Dataset.from_tensor_slices((examples.ids.astype(str), labels))
        load = _load_file
    else:
        ds = tf.data.Dataset.from_tensor_slices((examples.images, labels))
        load = _load_array
    if training and not cache:
        # Shuffle cheap file names before the expensive decode.
        ds = ds.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda x, y: (_resize(load(x), image_size), y), num_parallel_calls=AUTOTUNE)
    if cache:
        ds = ds.cache()
        if training:
            ds = ds.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
    if training and augment.enabled:
        ds = ds.map(lambda x, y: (_augment(x, image_size, augment, seed), y), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=False)
    ds = ds.map(lambda x, y: (preprocess(x), y), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def should_cache(count: int, image_size: int, cache: bool | None = None) -> bool:
    """Whether ``count`` decoded images are kept in RAM: as configured, else when their float32
    pixels fit ``CACHE_BUDGET_BYTES`` (larger datasets stream from disk every epoch)."""
    if cache is not None:
        return bool(cache)
    return count * image_size * image_size * 3 * 4 <= CACHE_BUDGET_BYTES


def undecodable(paths: Sequence[str], parallel: int = 4) -> dict[str, str]:
    """``{path: reason}`` for the files that ``decode_image`` (what training runs) cannot decode.

    The files are decoded in parallel in a tf.data pipeline that skips failures; only the
    failures are decoded again, one by one, for their error message. Call it only on files
    whose header has been checked (a decompression bomb would be decoded).
    """
    if not paths:
        return {}
    indices = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(paths), dtype=tf.int64), tf.constant([str(p) for p in paths]))
    )
    decoded = (
        indices.map(lambda i, path: (i, tf.shape(_load_file(path))[0]), num_parallel_calls=parallel)
        .ignore_errors()
        .batch(4096)
    )
    ok = np.zeros(len(paths), dtype=bool)
    for batch, _ in decoded:
        ok[batch.numpy()] = True
    failed = {}
    for index in np.flatnonzero(~ok):
        try:
            _load_file(tf.constant(str(paths[index])))
        except (tf.errors.OpError, ValueError) as err:
            failed[str(paths[index])] = f"cannot be decoded ({_tf_message(err)})"
    return failed


def _tf_message(err: Exception) -> str:
    text = getattr(err, "message", None) or str(err)
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)  # "{{function_node __wrapped__DecodeImage_...}}"
    text = re.sub(r"\s*\[Op:\w+\].*$", "", text, flags=re.S)
    return " ".join(text.split())[:200] or err.__class__.__name__


def decode_image(data: tf.Tensor) -> tf.Tensor:
    """JPEG/PNG/BMP/GIF bytes -> uint8 RGB (greyscale is expanded, alpha dropped)."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _load_file(path: tf.Tensor) -> tf.Tensor:
    return decode_image(tf.io.read_file(path))


def _load_array(image: tf.Tensor) -> tf.Tensor:
    return image


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
    image = tf.cast(image, tf.float32)
    shape = tf.shape(image)
    # Skip the resize (and its blur) when the image is already the target size (CIFAR at 32).
    return tf.cond(
        tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size)),
        lambda: tf.ensure_shape(image, [size, size, 3]),
        lambda: tf.ensure_shape(tf.image.resize(image, [size, size], antialias=True), [size, size, 3]),
    )


def _augment(image: tf.Tensor, size: int, augment: Augment, seed: int) -> tf.Tensor:
    if augment.crop_padding > 0:
        padded = size + 2 * augment.crop_padding
        image = tf.image.resize_with_crop_or_pad(image, padded, padded)
        image = tf.image.random_crop(image, [size, size, 3], seed=seed)
    if augment.flip:
        image = tf.image.random_flip_left_right(image, seed=seed)
    return image


