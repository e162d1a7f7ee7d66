"""Training-time augmentation, from TensorFlow's image ops and Keras's own preprocessing layers.

Per image (before batching), in this order: pad and random crop, horizontal flip
(``tf.image``, as before the Keras layers were added), then ``keras.layers.RandomZoom``,
``RandAugment`` and ``RandomErasing`` (last, as in the Random Erasing paper). Per batch (after
batching, on one-hot labels): ``keras.layers.MixUp`` or ``CutMix``, which also mix the labels.
All work on float32 pixels in [0, 255], before the model's preprocessing. Validation and test
data are never augmented.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import keras
import tensorflow as tf

from triptych.config import AugmentConfig

PIXEL_RANGE = (0, 255)  # decoded, resized images before preprocessing
# Input data stays float32 under a mixed-precision policy (which would otherwise make these layers bfloat16).
DTYPE = "float32"
# What keys and logs showed before the Keras layers existed: always written, so old cache keys stay valid.
_ALWAYS_SHOWN = ("crop_padding", "flip")

ImageFn = Callable[[tf.Tensor], tf.Tensor]
BatchFn = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation; ``str()`` describes it completely (it goes into cache keys)."""

    crop_padding: int = 0  # pixels of zero padding, then a random crop back to size
    flip: bool = False  # random horizontal flip
    rand_augment: tuple[int, float] | None = None  # (num_ops, magnitude) of keras.layers.RandAugment
    zoom: float = 0.0  # keras.layers.RandomZoom by up to this fraction, in or out
    erasing: float = 0.0  # probability of keras.layers.RandomErasing
    mixup: float | None = None  # Beta alpha of keras.layers.MixUp
    cutmix: float | None = None  # factor of keras.layers.CutMix

    @classmethod
    def from_config(cls, config: AugmentConfig) -> Augment:
        ra = config.rand_augment
        return cls(
            crop_padding=config.crop_padding,
            flip=config.flip,
            rand_augment=None if ra is None else (ra.num_ops, ra.magnitude),
            zoom=config.zoom,
            erasing=config.erasing,
            mixup=config.mixup,
            cutmix=config.cutmix,
        )

    @property
    def enabled(self) -> bool:
        """Whether single images are augmented."""
        return self.crop_padding > 0 or self.flip or self.rand_augment is not None or self.zoom > 0 or self.erasing > 0

    @property
    def mixes(self) -> bool:
        """Whether batches are mixed (MixUp / CutMix: soft labels)."""
        return self.mixup is not None or self.cutmix is not None

    def __str__(self) -> str:
        # Options at their default (off) are left out: adding an option keeps existing cache keys.
        shown = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                 if f.name in _ALWAYS_SHOWN or getattr(self, f.name) != f.default]
        return f"Augment({', '.join(shown)})"


def image_augmenter(augment: Augment, size: int, seed: int) -> ImageFn:
    """A function augmenting one ``size x size x 3`` image; its random layers are seeded by ``seed``."""
    layers = _image_layers(augment, seed)

    def apply(image: tf.Tensor) -> tf.Tensor:
        if augment.crop_padding > 0:
            padded = size + 2 * augment.crop_padding
            image = tf.image.resize_with_crop_or_pad(image, padded, padded)
            image = tf.image.random_crop(image, [size, size, 3], seed=seed)
        if augment.flip:
            image = tf.image.random_flip_left_right(image, seed=seed)
        for layer in layers:
            image = layer(image, training=True)
        return image

    return apply


def _image_layers(augment: Augment, seed: int) -> list[keras.layers.Layer]:
    layers: list[keras.layers.Layer] = []
    if augment.zoom > 0:
        layers.append(keras.layers.RandomZoom((-augment.zoom, augment.zoom), seed=seed, dtype=DTYPE))
    if augment.rand_augment is not None:
        num_ops, magnitude = augment.rand_augment
        layers.append(keras.layers.RandAugment(PIXEL_RANGE, num_ops=num_ops, factor=magnitude, seed=seed, dtype=DTYPE))
    if augment.erasing > 0:
        # A (p, p) factor applies it with probability p; a single float would draw p from [0, p].
        layers.append(
            keras.layers.RandomErasing((augment.erasing, augment.erasing), value_range=PIXEL_RANGE, seed=seed, dtype=DTYPE)
        )
    return layers


def batch_mixer(augment: Augment, seed: int) -> BatchFn:
    """A function mixing a batch of images and their one-hot labels: MixUp, CutMix, or (both
    configured) one of the two per batch with equal odds, as timm does."""
    mixers = []
    if augment.mixup is not None:
        mixers.append(keras.layers.MixUp(alpha=augment.mixup, seed=seed, dtype=DTYPE))
    if augment.cutmix is not None:
        mixers.append(keras.layers.CutMix(factor=augment.cutmix, seed=seed, dtype=DTYPE))
    if not mixers:
        raise ValueError("batch_mixer: augment has neither mixup nor cutmix")

    def mix_with(layer: keras.layers.Layer, images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        mixed = layer({"images": images, "labels": labels}, training=True)
        return mixed["images"], mixed["labels"]

    def apply(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if len(mixers) == 1:
            return mix_with(mixers[0], images, labels)
        first = tf.random.uniform([], seed=seed) < 0.5
        return tf.cond(first, lambda: mix_with(mixers[0], images, labels), lambda: mix_with(mixers[1], images, labels))

    return apply
