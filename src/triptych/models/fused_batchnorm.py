"""BatchNormalization through TensorFlow's fused kernel, where it is measured faster.

Keras 3's BatchNormalization computes its batch moments and the normalisation as separate ops
(35-40% of a ResNet-50 training step's op time on TensorFlow in our profile). In training mode
:class:`BatchNormalization` here calls ``FusedBatchNormV3`` (one kernel forward, one backward) on
4-D channels-last inputs and updates the moving statistics exactly as Keras does; every other
case (inference, other ranks or axes, masks, renorm, synchronized) is Keras's own code.

Whether fusing pays depends on the machine (1.25x for a ResNet-50 on an AMX Xeon, 1.00-1.05x on
an AVX2 EPYC), so ``fused_bn: auto`` *measures* it, once per machine, as ``precision: auto`` does
(:mod:`triptych.training.precision_auto`: the same machine key, memo folder and child process):
a few training steps of a small conv-BN net with each layer, in alternating rounds, fused only
when at least :data:`FUSED_MARGIN` times faster. Remembered in ``$TRIPTYCH_CACHE/fused-bn-auto.json``.

The class keeps Keras's name, weights, order and config, so a ``.weights.h5`` file (which Keras
addresses by snake-cased class name) loads into either class, and :func:`standard_layers_copy`
turns a model into one of plain Keras layers with the same weights, for a ``model.keras`` that
loads with ``keras.saving.load_model(..., safe_mode=True)`` and no triptych import.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from triptych.cache import cache_dir
from triptych.errors import InvalidArgumentError
from triptych.training.precision_auto import (
    alternating_seconds,
    probe_result,
    Machine,
    recall_all,
    remember,
    run_measurement,
    this_machine,
    training_step,
)

AUTO = "auto"
CHOICES = (AUTO, True, False)
FUSED_MARGIN = 1.03  # fused must be this much faster: a near-tie is noise, and Keras's layer is the reference
MEASURE_TIMEOUT_S = 300.0
MEMO_FILE = "fused-bn-auto.json"
_VERSION = "triptych-fused-bn-auto-1"
_CHOSEN: dict[str, FusedChoice] = {}  # machine key -> the answer for the rest of this process


@keras.saving.register_keras_serializable(package="triptych", name="FusedBatchNormalization")
class BatchNormalization(keras.layers.BatchNormalization):
    """keras.layers.BatchNormalization whose training-mode forward and backward are TensorFlow's
    fused kernels. Same constructor, config and weights; named like Keras's so that weights
    files are interchangeable."""

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and self._fusable(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, "float32")  # as Keras: BN statistics in float32 even under mixed precision
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, "float32") if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, "float32") if self.center else tf.zeros([channels])
        y, mean, unbiased_variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=tf.constant([], "float32"), variance=tf.constant([], "float32"),
            epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC", is_training=True,
        )
        # The kernel reports Bessel-corrected variance; Keras's moving variance averages the biased one.
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), "float32")
        variance = unbiased_variance * (count - 1.0) / count
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(y, self.compute_dtype)

    def _fusable(self, inputs, mask) -> bool:
        return (
            len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and mask is None
            and not self.renorm
            and not self.synchronized
            and keras.backend.backend() == "tensorflow"
        )


def batch_normalization_layer(fused: bool) -> type[keras.layers.BatchNormalization]:
    """The class a model builder uses: ours when ``fused``, else Keras's."""
    return BatchNormalization if fused else keras.layers.BatchNormalization


def standard_layers_copy(model: keras.Model) -> keras.Model:
    """``model`` itself when it has no fused layer, else a clone with keras.layers.BatchNormalization
    in their place (same config, same weights): what ``model.keras`` should hold."""
    if not any(isinstance(layer, BatchNormalization) for layer in model.layers):
        return model

    def standard(layer: keras.layers.Layer) -> keras.layers.Layer:
        cls = keras.layers.BatchNormalization if isinstance(layer, BatchNormalization) else layer.__class__
        return cls.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=standard)
    copy.set_weights(model.get_weights())
    return copy


# --------------------------------------------------------------------------- auto


@dataclass(frozen=True)
class FusedChoice:
    """Whether ResNets use the fused layer, what was asked for and why."""

    fused: bool
    requested: str | bool
    reason: str
    measured: dict = field(default_factory=dict)


def resolve_fused_bn(
    requested: str | bool,
    cache: str | os.PathLike | None = None,
    machine: Machine | None = None,
    measure: Callable[[], dict] | None = None,
) -> FusedChoice:
    """``True``/``False``: as asked. ``auto``: remembered for this machine in ``cache`` (default
    :func:`triptych.cache.cache_dir`), else measured (in a child process) and remembered; the first
    answer holds for the rest of the process."""
    if isinstance(requested, bool):
        return FusedChoice(requested, requested, f"model.options.fused_bn is {requested}")
    if requested != AUTO:
        raise InvalidArgumentError(f"unknown model.options.fused_bn {requested!r}; expected auto, true or false")
    machine = machine or this_machine()
    memo = Path(cache or cache_dir()) / MEMO_FILE
    if machine.key() not in _CHOSEN:
        _CHOSEN[machine.key()] = _recalled(memo, machine) or _decided(memo, machine, measure or measure_in_child)
    return _CHOSEN[machine.key()]


def decide(speedup: float | None, error: str | None = None, margin: float = FUSED_MARGIN) -> tuple[bool, str]:
    """``(fused, reason)`` for ``auto``; pure. ``speedup``: Keras's median training step / the fused one's."""
    if error:
        return False, f"fused BatchNorm could not be measured on this machine ({error})"
    if speedup is None:
        raise ValueError("fused BatchNorm is chosen by measurement: pass the measured speedup")
    fused, needed = (True, ">=") if speedup >= margin else (False, "<")
    return fused, f"fused BatchNorm measured {speedup:.2f}x as fast as Keras's on this machine ({needed} {margin}x)"


def _recalled(memo: Path, machine: Machine) -> FusedChoice | None:
    entry = recall_all(memo, _VERSION).get(machine.key())
    if not isinstance(entry, dict) or not isinstance(entry.get("fused"), bool):
        return None
    reason = f"{entry.get('reason')}; measured {entry.get('measured_at')}, remembered in {memo}"
    return FusedChoice(entry["fused"], AUTO, reason, dict(entry.get("measured") or {}))


def _decided(memo: Path, machine: Machine, measure: Callable[[], dict]) -> FusedChoice:
    measured = measure()
    fused, reason = decide(measured.get("fused_speedup"), measured.get("error"))
    remember(memo, machine.key(), {"fused": fused, "reason": reason, "measured": measured, "machine": asdict(machine),
                                   "measured_at": dt.datetime.now().isoformat(timespec="seconds")}, _VERSION)
    return FusedChoice(fused, AUTO, f"{reason}; measured now, remembered in {memo}", measured)


def measure_in_child(timeout: float = MEASURE_TIMEOUT_S, probe: dict | None = None) -> dict:
    """:func:`measure_fused_speedup` in a child process (its layers and memory stay out of ours)."""
    result, error = run_measurement("triptych.models.fused_batchnorm", probe or {}, timeout)
    return {"error": error} if error else result


def measure_fused_speedup(rounds: int = 7, batch: int = 16, image_size: int = 64, width: int = 64) -> dict:
    """Keras's median training-step time / the fused layer's, on the same small conv-BN net, one
    warm-up step each, then ``rounds`` alternating rounds."""
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(-1, 1, (batch, image_size, image_size, 3)), tf.float32)
    labels = tf.one_hot(rng.integers(0, 10, batch), 10)
    steps = {name: training_step(_probe_net(image_size, width, fused), images, labels)
             for name, fused in (("keras", False), ("fused", True))}
    return probe_result(
        "fused_speedup", "keras", "fused", alternating_seconds(steps, rounds),
        f"fp32 training step, conv-BN net, {image_size}px batch {batch} width {width}",
    )


def _probe_net(image_size: int, width: int, fused: bool) -> keras.Model:
    """Conv-BN-ReLU at two widths and resolutions, as the ResNets are made of."""
    bn = batch_normalization_layer(fused)
    inputs = keras.Input((image_size, image_size, 3))
    x = inputs
    for filters, strides in ((width, 2), (width, 1), (width, 1), (2 * width, 2), (2 * width, 1)):
        x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
        x = keras.layers.ReLU()(bn()(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


if __name__ == "__main__":  # the child process of measure_in_child: one JSON line
    print(json.dumps(measure_fused_speedup(**json.loads(sys.argv[1]))))
