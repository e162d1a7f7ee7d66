"""tf.data input pipelines: decode, resize, cache, shuffle, augment, normalise, batch, prefetch.

Images are decoded in parallel from disk (or sliced from in-memory arrays) and resized by
``triptych.data.images`` (the decode and resize inference uses too). Decoded, resized images
are cached in memory when they fit a budget, so that later epochs skip the JPEG decode; large
datasets keep streaming from disk.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from triptych.data.augmentation import Augment, batch_mixer, image_augmenter
from triptych.data.images import decode_file, resize
from triptych.data.sources import Examples

AUTOTUNE = tf.data.AUTOTUNE
CACHE_BUDGET_BYTES = 1 << 30  # decoded float32 images kept in RAM at most (1 GiB)


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
    """Batches of ``(preprocessed float32 images, one-hot float32 labels)``; with MixUp or
    CutMix the training labels are soft (each row still sums to 1).

    ``cache=None`` caches decoded images in memory when they fit ``CACHE_BUDGET_BYTES``.
    Evaluation datasets keep their order (predictions line up with ``examples.ids``).
    """
    cache = should_cache(len(examples), image_size, cache)
    labels = tf.one_hot(examples.labels, num_classes, dtype=tf.float32)
    if examples.is_files:
        ds = tf.data.Dataset.from_tensor_slices((examples.ids.astype(str), labels))
        load = decode_file
    else:
        ds = tf.data.Dataset.from_tensor_slices((examples.images, labels))
        load = _load_array
    if training and not cache:
        # Shuffle cheap file names before the expensive decode.
        ds = ds.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda x, y: (resize(load(x), image_size, image_size), y), num_parallel_calls=AUTOTUNE)
    if cache:
        ds = ds.cache()
        if training:
            ds = ds.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
    if training and augment.enabled:
        augment_image = image_augmenter(augment, image_size, seed)
        ds = ds.map(lambda x, y: (augment_image(x), y), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=False)
    if training and augment.mixes:
        ds = ds.map(batch_mixer(augment, seed), num_parallel_calls=AUTOTUNE)
    ds = ds.map(lambda x, y: (preprocess(x), y), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def should_cache(count: int, image_size: int, cache: bool | None = None) -> bool:
    """Whether ``count`` decoded images are kept in RAM: as configured, else when their float32
    pixels fit ``CACHE_BUDGET_BYTES`` (larger datasets stream from disk every epoch)."""
    if cache is not None:
        return bool(cache)
    return count * image_size * image_size * 3 * 4 <= CACHE_BUDGET_BYTES


def _load_array(image: tf.Tensor) -> tf.Tensor:
    return image
