"""Learning-rate schedules with linear warm-up: ``cosine`` (to 0 at the last step), ``step``
(divide by 10 at ``step_epochs``) or ``constant``.

A schedule's length (epochs, warm-up, step epochs) lives in variables, not in the traced training
step: a time budget chooses the epochs after a warm-up has compiled the model and traced its step
(:mod:`triptych.training.budget_plan`), and :meth:`EpochSchedule.retime` then fits the schedule to
them. Compiling again would trace the step again, which costs as much as 55 s for DenseNet-121 on a
2-core CPU (``benchmarks/trace_cost.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
from keras import ops

KINDS = ("cosine", "step", "constant")


@keras.saving.register_keras_serializable(package="triptych")
class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate at each training step, for ``epochs`` of ``steps_per_epoch`` steps:
    linear warm-up from ~0 to ``learning_rate`` over ``warmup_epochs``, then ``kind``'s decay.

    - ``cosine``: ``0.5 * lr * (1 + cos(pi * t / T))`` over the steps after the warm-up (as
      ``keras.optimizers.schedules.CosineDecay`` with ``alpha=0``);
    - ``step``: ``lr * 0.1**k`` after the k-th of ``step_epochs`` (as ``PiecewiseConstantDecay``);
    - ``constant``: ``lr``.
    """

    def __init__(self, kind: str, learning_rate: float, steps_per_epoch: int, epochs: int,
                 warmup_epochs: float = 0.0, step_epochs: Sequence[int] = ()):
        if kind not in KINDS:
            raise ValueError(f"unknown schedule {kind!r}; expected one of {', '.join(KINDS)}")
        self.kind = kind
        self.learning_rate = float(learning_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.slots = len(step_epochs)  # boundaries the variables hold; a retimed schedule may use fewer
        self._warmup_steps = keras.Variable(0.0, dtype="float32", trainable=False, name="warmup_steps")
        self._decay_steps = keras.Variable(1.0, dtype="float32", trainable=False, name="decay_steps")
        self._boundaries = keras.Variable([math.inf] * max(self.slots, 1), dtype="float32", trainable=False,
                                          name="boundaries")
        # 0.1**k for k boundaries passed, as Python floats: the same float32 values as PiecewiseConstantDecay's.
        self._values = [self.learning_rate * 0.1**k for k in range(max(self.slots, 1) + 1)]
        self.retime(epochs, warmup_epochs, step_epochs)

    def retime(self, epochs: int, warmup_epochs: float = 0.0, step_epochs: Sequence[int] = ()) -> None:
        """The same schedule over ``epochs`` (and this warm-up and these step epochs)."""
        if len(step_epochs) > self.slots:
            raise ValueError(f"this schedule holds {self.slots} step epoch(s), got {list(step_epochs)}")
        self.epochs, self.warmup_epochs, self.step_epochs = int(epochs), float(warmup_epochs), list(step_epochs)
        warmup = int(round(warmup_epochs * self.steps_per_epoch))
        boundaries = [max(e * self.steps_per_epoch - warmup, 0) for e in sorted(step_epochs)]
        self._warmup_steps.assign(float(warmup))
        self._decay_steps.assign(float(max(self.steps_per_epoch * epochs - warmup, 1)))
        self._boundaries.assign([float(b) for b in boundaries] + [math.inf] * (max(self.slots, 1) - len(boundaries)))

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = ops.convert_to_tensor(self._warmup_steps)
        warm = self.learning_rate * (step + 1.0) / ops.maximum(warmup, 1.0)
        return ops.where(step < warmup, warm, self._after_warmup(step - warmup))

    def _after_warmup(self, step):
        if self.kind == "cosine":
            decay = ops.convert_to_tensor(self._decay_steps)
            done = ops.minimum(step, decay) / decay
            return self.learning_rate * 0.5 * (1.0 + ops.cos(math.pi * done))
        if self.kind == "step":
            passed = ops.sum(ops.cast(step > ops.convert_to_tensor(self._boundaries), "int32"))
            return ops.take(ops.convert_to_tensor(self._values, dtype="float32"), passed)
        return ops.ones_like(step) * self.learning_rate

    def get_config(self) -> dict:
        return {"kind": self.kind, "learning_rate": self.learning_rate, "steps_per_epoch": self.steps_per_epoch,
                "epochs": self.epochs, "warmup_epochs": self.warmup_epochs, "step_epochs": self.step_epochs}


def make_schedule(
    kind: str,
    learning_rate: float,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: float = 0,
    step_epochs: list[int] | None = None,
):
    """``kind``'s :class:`EpochSchedule`, or the plain ``learning_rate`` for a constant one without warm-up
    (it does not depend on the epochs)."""
    if kind not in KINDS:
        raise ValueError(f"unknown schedule {kind!r}; expected one of {', '.join(KINDS)}")
    if is_constant(kind, steps_per_epoch, warmup_epochs):
        return learning_rate
    return EpochSchedule(kind, learning_rate, steps_per_epoch, epochs, warmup_epochs, step_epochs or [])


def is_constant(kind: str, steps_per_epoch: int, warmup_epochs: float) -> bool:
    """Whether ``make_schedule`` gives a plain learning rate: constant, with no warm-up step."""
    return kind == "constant" and not int(round(warmup_epochs * steps_per_epoch))
