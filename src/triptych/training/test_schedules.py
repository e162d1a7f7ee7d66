"""EpochSchedule: the learning rate per step of cosine / step / constant schedules with warm-up,
as Keras's own schedules give it, and the same after retiming to other epochs."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from triptych.training.schedules import EpochSchedule, make_schedule


def keras_reference(kind, lr, steps, epochs, warmup_epochs=0.0, step_epochs=()):
    """The learning rates of Keras's CosineDecay / PiecewiseConstantDecay after a linear warm-up."""
    warmup = int(round(warmup_epochs * steps))
    if kind == "cosine":
        after = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(steps * epochs - warmup, 1))
    elif kind == "step" and step_epochs:
        boundaries = [max(e * steps - warmup, 0) for e in sorted(step_epochs)]
        after = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, [lr * 0.1**i for i in range(len(boundaries) + 1)])
    else:
        after = lambda step: lr  # noqa: E731
    rates = []
    for step in range(steps * epochs + 2):
        rate = lr * (step + 1) / max(warmup, 1) if step < warmup else float(after(step - warmup))
        rates.append(rate)
    return np.array(rates, dtype=np.float32)


def rates(schedule, count):
    return np.array([float(schedule(step)) for step in range(count)], dtype=np.float32)


@pytest.mark.parametrize(("kind", "warmup", "step_epochs"), [
    ("cosine", 0, ()), ("cosine", 1.5, ()), ("step", 0, (2, 4)), ("step", 1, (2, 4)), ("step", 0, ()),
    ("constant", 1, ()),
])
def test_the_schedule_matches_keras_own(kind, warmup, step_epochs):
    expected = keras_reference(kind, 0.1, 5, 6, warmup, step_epochs)
    schedule = make_schedule(kind, 0.1, 5, 6, warmup, list(step_epochs))
    np.testing.assert_allclose(rates(schedule, len(expected)), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("kind", "warmup", "before", "after"), [
    ("cosine", 2, (), ()), ("step", 2, (10, 15), (2, 4)), ("step", 0, (10, 15), (3,)),
])
def test_a_retimed_schedule_is_the_schedule_of_its_new_epochs(kind, warmup, before, after):
    schedule = EpochSchedule(kind, 0.01, 7, 20, warmup, before)
    schedule.retime(5, warmup / 4, after)
    expected = keras_reference(kind, 0.01, 7, 5, warmup / 4, after)
    np.testing.assert_allclose(rates(schedule, len(expected)), expected, rtol=1e-6, atol=1e-9)
    assert schedule.get_config()["epochs"] == 5


def test_a_retimed_schedule_cannot_hold_more_step_epochs_than_it_was_built_with():
    schedule = EpochSchedule("step", 0.01, 7, 20, 0, [10])
    with pytest.raises(ValueError, match="holds 1 step epoch"):
        schedule.retime(5, 0, [1, 2])


def test_a_constant_schedule_without_warm_up_is_the_plain_learning_rate():
    assert make_schedule("constant", 0.1, 5, 6) == 0.1
    with pytest.raises(ValueError, match="unknown schedule 'linear'; expected one of cosine, step, constant"):
        make_schedule("linear", 0.1, 5, 6)


def test_the_schedule_serialises():
    schedule = EpochSchedule("cosine", 0.01, 7, 20, 2)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    np.testing.assert_allclose(rates(again, 150), rates(schedule, 150))
