"""A model's inference forward pass traced once for every batch size.

Keras's ``predict`` / ``predict_on_batch`` trace their step again for each new input shape (the
last, partial batch of a test set; batch 1 after batch 32), which costs a trace each time and
makes TensorFlow warn about retracing. One ``tf.function`` whose input signature leaves the batch
size open is traced once per model.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import tensorflow as tf

_forwards: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forward_function(model, image_shape: Sequence[int] | None = None) -> Callable[[tf.Tensor], tf.Tensor]:
    """``model(images, training=False)`` for float32 batches of ``image_shape`` (default: the
    model's input shape without the batch axis); cached for the model's lifetime."""
    shape = tuple(int(d) if d is not None else None for d in (image_shape or model.input_shape[1:]))
    key = (shape,)
    per_model = _forwards.setdefault(model, {})
    if key not in per_model:
        held = weakref.ref(model)  # a strong reference here would keep the cache's key alive forever

        def forward(images: tf.Tensor) -> tf.Tensor:
            return held()(images, training=False)

        signature = [tf.TensorSpec((None, *shape), tf.float32, name="images")]
        per_model[key] = tf.function(forward, input_signature=signature)
    return per_model[key]
