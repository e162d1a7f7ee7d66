"""The warm-up behind ``training.time_budget``: measure on this machine what each training phase of
an experiment costs, choose the epochs that fit (:func:`triptych.budget.choose_epochs`), and give
the experiment those epochs with its schedule fitted to them (:func:`with_chosen_epochs`).

The warm-up trains the real model (this size, batch, precision, optimizer, input pipeline) for a
few steps of each phase after one traced step, and times the inference pass on validation batches
and one checkpoint save. It then puts the model's weights and trainable flags back, so training
starts where it would have without a budget.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from triptych.budget import PhaseCost, choose_epochs
from triptych.config import ExperimentConfig, TrainingConfig
from triptych.errors import InvalidArgumentError
from triptych.models.forward import forward_function
from triptych.models.pretrained import unfreeze
from triptych.rundir import BudgetInfo
from triptych.training.feature_cache import head_model
from triptych.training.phases import (
    FINE_TUNE,
    HEAD,
    TRAIN,
    PhaseData,
    fine_tune_config,
    shares_trunk_cache,
    trunk_views,
)
from triptych.training.trainer import compile_model, steps_for, without_autotune_wait
from triptych.training.trunk_cache import split_model

WARMUP_STEPS = 5  # timed steps per measurement, after one traced step
WARMUP_SHARE = 0.02  # of the budget: a measurement stops timing steps once they have taken this long
# profile.json times 7 batch-1 and 5 batch-32 forward passes: counted as 12 batches of 32, to be safe.
PROFILE_IMAGES = 12 * 32


@dataclass(frozen=True)
class StepTiming:
    seconds: float  # one step (a batch in, its update done), mean of the timed steps
    trace_seconds: float  # what the first step took more: paid again by each fit's own trace
    images_per_second: float
    # Timed through model.fit on the phase's own data, so its fit may keep this trace (see plan_epochs).
    fit_step: bool = False


@dataclass(frozen=True)
class Inference:
    timing: StepTiming  # the traced forward pass on validation batches (as validation and predictions run)
    save_seconds: float  # one weights checkpoint


def plan_epochs(
    exp: ExperimentConfig, model: keras.Model, data: PhaseData, phases: list[str], *,
    budget_s: float, spent_s: float, num_val: int, num_test: int,
) -> BudgetInfo:
    """The epochs of ``phases`` that fit ``budget_s``, of which ``spent_s`` is already gone.

    Raises :class:`~triptych.errors.InvalidArgumentError` when one epoch of each phase does not fit.
    """
    started = time.perf_counter()
    limit = WARMUP_SHARE * budget_s
    inference = _measure_inference(model, data, limit)
    with _state_kept(model):
        measured = {phase: _phase_cost(phase, exp, model, data, inference, num_val, limit) for phase in phases}
    costs = _without_kept_trace(measured)
    fixed = spent_s + (time.perf_counter() - started) + _after_training_seconds(inference, num_test * (2 if exp.data.tta == "flip" else 1))
    chosen = choose_epochs(budget_s, fixed, costs, experiment=exp.name)
    planned = fixed + sum(c.fixed_seconds + chosen[c.phase] * c.epoch_seconds for c in costs)
    return BudgetInfo(
        seconds=budget_s,
        chosen_epochs=chosen,
        configured_epochs={c.phase: c.max_epochs for c in costs},
        seconds_per_epoch={c.phase: round(c.epoch_seconds, 3) for c in costs},
        train_img_s={phase: round(timing.images_per_second, 1) for phase, (_, timing) in measured.items()},
        predict_img_s=round(inference.timing.images_per_second, 1),
        fixed_seconds=round(fixed + sum(c.fixed_seconds for c in costs), 1),
        planned_seconds=round(planned, 1),
    )


def _without_kept_trace(measured: dict[str, tuple[PhaseCost, StepTiming]]) -> list[PhaseCost]:
    """The phase costs, less the training trace that fit keeps from the warm-up: the model stays
    compiled for the last phase timed on it, and when that is the only phase trained on the model
    itself (not on a cache), its fit keeps the traced step (trainer.compile_or_retime)."""
    on_model = [phase for phase, (_, timing) in measured.items() if timing.fit_step]
    costs = []
    for phase, (cost, timing) in measured.items():
        if on_model == [phase]:
            cost = replace(cost, fixed_seconds=max(cost.fixed_seconds - timing.trace_seconds, 0.0))
        costs.append(cost)
    return costs


def with_chosen_epochs(exp: ExperimentConfig, decision: BudgetInfo | None) -> ExperimentConfig:
    """``exp`` with the chosen epochs; its schedule (warm-up, step epochs) scaled to them, so a
    cosine schedule still ends at the last chosen epoch."""
    if decision is None:
        return exp
    training = exp.training
    first = decision.chosen_epochs.get(TRAIN, decision.chosen_epochs.get(HEAD, training.epochs))
    scale = first / training.epochs
    update: dict = {
        "epochs": first,
        "warmup_epochs": training.warmup_epochs * scale,
        "step_epochs": sorted({max(1, round(e * scale)) for e in training.step_epochs}),
    }
    if FINE_TUNE in decision.chosen_epochs and training.fine_tune:
        update["fine_tune"] = training.fine_tune.model_copy(update={"epochs": decision.chosen_epochs[FINE_TUNE]})
    return exp.model_copy(update={"training": training.model_copy(update=update)})


def _phase_cost(
    phase: str, exp: ExperimentConfig, model: keras.Model, data: PhaseData, inference: Inference, num_val: int,
    limit: float,
) -> tuple[PhaseCost, StepTiming]:
    """One epoch and the once-per-phase costs of ``phase``, from a few real training steps."""
    if phase == HEAD and exp.training.feature_cache:
        return _cached_head_cost(exp, model, data, inference, num_val, limit)
    if phase == FINE_TUNE and exp.training.fine_tune.trunk_cache is not False:
        cached = _trunk_cached_fine_tune_cost(exp, model, data, inference, num_val, limit)
        if cached is not None:
            return cached
    cfg, max_epochs = exp.training, exp.training.epochs
    if phase == FINE_TUNE:
        ft = exp.training.fine_tune
        unfreeze(model, ft.unfreeze_blocks, ft.unfreeze_layers)
        cfg, max_epochs = fine_tune_config(exp), ft.epochs
    elif phase == HEAD:
        model.get_layer("base").trainable = False
    steps = steps_for(data.num_train, data.batch_size)
    timing = _time_fit(model, data, cfg, steps, limit)
    # An epoch: its training steps, the validation pass, a backup and (when better) a best checkpoint.
    epoch = steps * timing.seconds + num_val / inference.timing.images_per_second + 2 * inference.save_seconds
    # fit traces its own training and validation steps again, and once more for a smaller last batch.
    fixed = (timing.trace_seconds * _traces(data.num_train, data.batch_size)
             + inference.timing.trace_seconds * _traces(num_val, data.batch_size))
    return PhaseCost(phase, epoch, fixed, max_epochs), timing


def _cached_head_cost(
    exp: ExperimentConfig, model: keras.Model, data: PhaseData, inference: Inference, num_val: int, limit: float
) -> tuple[PhaseCost, StepTiming]:
    """The head on cached features: the cache build (the frozen backbone over every train view and
    val image) once, then cheap epochs of a dense layer, timed here on stand-in features."""
    rows = data.num_train * exp.training.cache_views
    dim = int(model.get_layer("predictions").kernel.shape[0])
    classes = int(model.output_shape[-1])
    features = np.random.default_rng(0).standard_normal((data.batch_size, dim)).astype(np.float32)
    labels = keras.utils.to_categorical(np.arange(data.batch_size) % classes, classes).astype(np.float32)
    head = head_model(model, dim)
    steps = steps_for(rows, data.batch_size)
    timing = _time_training(head, _repeat((features, labels)), exp.training, steps, limit)
    epoch = (steps + steps_for(num_val, data.batch_size)) * timing.seconds + inference.save_seconds
    build = (rows + num_val) / inference.timing.images_per_second + inference.timing.trace_seconds
    traces = _traces(rows, data.batch_size) + _traces(num_val, data.batch_size)
    return PhaseCost(HEAD, epoch, build + traces * timing.trace_seconds, exp.training.epochs), timing


def _trunk_cached_fine_tune_cost(
    exp: ExperimentConfig, model: keras.Model, data: PhaseData, inference: Inference, num_val: int, limit: float
) -> tuple[PhaseCost, StepTiming] | None:
    """Phase 2 on the trunk cache: the trunk's pass over every train view and val image once (unless
    the head phase built it already), then epochs of the unfrozen top blocks alone, timed here on
    stand-in trunk activations. None when the model has no trunk to cache (fine-tuned on images)."""
    ft = exp.training.fine_tune
    unfreeze(model, ft.unfreeze_blocks, ft.unfreeze_layers)
    try:
        split = split_model(model, ft.unfreeze_blocks, ft.unfreeze_layers)
    except InvalidArgumentError:
        return None
    rng = np.random.default_rng(0)
    stand_in = [rng.standard_normal((data.batch_size, *t.shape[1:])).astype(np.float32) for t in split.top.inputs]
    classes = int(model.output_shape[-1])
    labels = keras.utils.to_categorical(np.arange(data.batch_size) % classes, classes).astype(np.float32)
    steps = steps_for(data.num_train, data.batch_size)
    batch = (stand_in[0] if len(stand_in) == 1 else stand_in, labels)
    timing = _time_training(split.top, _repeat(batch), fine_tune_config(exp), steps, limit)
    # A validation step (forward only) costs at most a training step.
    epoch = (steps + steps_for(num_val, data.batch_size)) * timing.seconds + 2 * inference.save_seconds
    views = trunk_views(exp)
    build = 0.0 if shares_trunk_cache(exp) else (views * data.num_train + num_val) / inference.timing.images_per_second
    traces = _traces(data.num_train, data.batch_size) + _traces(num_val, data.batch_size)
    return PhaseCost(FINE_TUNE, epoch, build + traces * timing.trace_seconds, ft.epochs), timing


def _traces(examples: int, batch_size: int) -> int:
    """How often a fit traces its step for ``examples``: once, and again for a smaller last batch."""
    return 1 + (examples > batch_size and examples % batch_size != 0)


def _after_training_seconds(inference: Inference, num_test: int) -> float:
    """Evaluation and extras: model.keras, the test predictions (``num_test`` images, each test-time
    view counted), profile.json, Grad-CAM (which loads the saved model)."""
    speed = inference.timing.images_per_second
    saves_and_loads = 4 * inference.save_seconds
    return (num_test + PROFILE_IMAGES) / speed + saves_and_loads + 2 * inference.timing.trace_seconds


def _measure_inference(model: keras.Model, data: PhaseData, limit: float) -> Inference:
    """The traced forward pass (the one the test predictions reuse) and one checkpoint save."""
    forward = forward_function(model)
    timing = _time_steps(lambda batch: forward(batch[0]).numpy(), _batches(data.make("val", False)), limit)
    with tempfile.TemporaryDirectory(prefix="triptych-warmup-") as tmp:
        started = time.perf_counter()
        model.save_weights(str(Path(tmp) / "warmup.weights.h5"))
        save = time.perf_counter() - started
    return Inference(timing, save)


def _time_training(model: keras.Model, batches: Iterator, cfg: TrainingConfig, steps_per_epoch: int,
                   limit: float) -> StepTiming:
    compile_model(model, cfg, steps_per_epoch)
    return _time_steps(lambda batch: model.train_on_batch(batch[0], batch[1]), batches, limit)


def _time_fit(model: keras.Model, data: PhaseData, cfg: TrainingConfig, steps_per_epoch: int, limit: float) -> StepTiming:
    """A few steps of ``model.fit`` on the phase's own training data, as its fit will run them, so
    that the fit keeps the training step traced here (trainer.compile_or_retime); the optimizer's
    state is then put back as compiling left it. Under a distribution strategy every worker runs
    all the steps (a worker stopping early would leave the others' collectives waiting)."""
    compile_model(model, cfg, steps_per_epoch)
    model.optimizer.build(model.trainable_variables)
    fresh = [variable.numpy() for variable in model.optimizer.variables]
    timer = _StepTimer(limit, stop_early=not tf.distribute.has_strategy())
    dataset = without_autotune_wait(data.make("train", True).repeat())  # as fit's, which traces per dataset spec
    model.fit(dataset, steps_per_epoch=1 + WARMUP_STEPS, epochs=1, verbose=0, callbacks=[timer],
              class_weight=data.class_weight)
    for variable, value in zip(model.optimizer.variables, fresh, strict=True):
        variable.assign(value)
    first, timed = timer.times[0], timer.times[1:]
    mean = statistics.fmean(timed)
    return StepTiming(mean, max(first - mean, 0.0), data.batch_size * len(timed) / sum(timed), fit_step=True)


class _StepTimer(keras.callbacks.Callback):
    """Each training step's wall time; stops the fit once the steps after the first took ``limit``."""

    def __init__(self, limit: float, stop_early: bool):
        super().__init__()
        self.limit, self.stop_early, self.times = limit, stop_early, []

    def on_train_batch_begin(self, batch, logs=None):
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._started)
        if self.stop_early and len(self.times) > 1 and sum(self.times[1:]) >= self.limit:
            self.model.stop_training = True


def _time_steps(step, batches: Iterator, limit: float) -> StepTiming:
    """One traced call of ``step``, then up to :data:`WARMUP_STEPS` timed ones (fewer once they
    have taken ``limit`` seconds); fetching each batch counts, as it does in an epoch. Only batches
    of the first one's size are stepped: a smaller last batch would be traced again."""
    started = time.perf_counter()
    first_batch = next(batches)
    step(first_batch)
    first = time.perf_counter() - started
    size = int(first_batch[0].shape[0])
    times, images = [], 0
    while len(times) < WARMUP_STEPS and sum(times) < limit:
        started = time.perf_counter()
        batch = next(batches)
        if int(batch[0].shape[0]) != size:
            continue
        step(batch)
        times.append(time.perf_counter() - started)
        images += size
    mean = statistics.fmean(times)
    return StepTiming(mean, max(first - mean, 0.0), images / sum(times))


def _batches(dataset) -> Iterator:
    return iter(dataset.repeat())


def _repeat(batch) -> Iterator:
    while True:
        yield batch


@contextmanager
def _state_kept(model: keras.Model):
    """Variables (weights, BatchNorm statistics, dropout's random state), trainable flags and the
    Python and NumPy random states as they were before the warm-up, so that training starts as it
    would have without it. Restored rather than seeded again: ``tf.random.set_seed`` clears
    TensorFlow's kernel cache, and the first training step then pays its graph's set-up again
    (measured: 17.8 s for DenseNet-121 at 64 px on 2 cores, AMD EPYC avx512_bf16)."""
    values = [(variable, variable.numpy()) for variable in model.variables]
    flags = [(layer, layer.trainable) for layer in _layers(model)]
    python_random, numpy_random = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        for layer, trainable in flags:  # outer layers first: setting a model's flag sets its layers' too
            layer.trainable = trainable
        for variable, value in values:
            variable.assign(value)
        random.setstate(python_random)
        np.random.set_state(numpy_random)


def _layers(layer: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    yield layer
    for inner in getattr(layer, "layers", []):
        yield from _layers(inner)
