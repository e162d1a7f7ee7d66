"""Learning-rate schedules with linear warm-up, built on Keras's own schedules."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="triptych")
class Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ~0 to ``target`` over ``warmup_steps``, then ``after`` (shifted by the warm-up)."""

    def __init__(self, target: float, warmup_steps: int, after: keras.optimizers.schedules.LearningRateSchedule):
        self.target = float(target)
        self.warmup_steps = int(warmup_steps)
        self.after = after

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = self.target * (step + 1.0) / float(max(self.warmup_steps, 1))
        return ops.where(step < self.warmup_steps, warm, self.after(step - self.warmup_steps))

    def get_config(self):
        return {
            "target": self.target,
            "warmup_steps": self.warmup_steps,
            "after": keras.saving.serialize_keras_object(self.after),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["after"] = keras.saving.deserialize_keras_object(config["after"])
        return cls(**config)


def make_schedule(
    kind: str,
    learning_rate: float,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: float = 0,
    step_epochs: list[int] | None = None,
):
    """``cosine`` (to 0 at the last step), ``step`` (divide by 10 at ``step_epochs``) or ``constant``."""
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    total_steps = max(steps_per_epoch * epochs - warmup_steps, 1)
    if kind == "cosine":
        after = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=total_steps)
    elif kind == "step":
        boundaries = [max(e * steps_per_epoch - warmup_steps, 0) for e in sorted(step_epochs or [])]
        values = [learning_rate * 0.1**i for i in range(len(boundaries) + 1)]
        if not boundaries:
            return learning_rate if not warmup_steps else Warmup(learning_rate, warmup_steps, _constant(learning_rate))
        after = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    elif kind == "constant":
        if not warmup_steps:
            return learning_rate
        after = _constant(learning_rate)
    else:
        raise ValueError(f"unknown schedule {kind!r}")
    return Warmup(learning_rate, warmup_steps, after) if warmup_steps else after


def _constant(learning_rate: float):
    # PiecewiseConstantDecay with one value is Keras's serialisable constant schedule.
    return keras.optimizers.schedules.PiecewiseConstantDecay([0], [learning_rate, learning_rate])
