"""Compile and fit a model: optimizer, LR schedule, loss, and the callbacks that make a run
resumable (EpochBackup), inspectable (history.csv) and selectable (best checkpoint)."""

from __future__ import annotations

import math
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from triptych.config import TrainingConfig
from triptych.training.backup import EpochBackup
from triptych.training.callbacks import BestCheckpoint, HistoryWriter
from triptych.training.distribute import sync_batchnorm_callbacks
from triptych.training.ema import ema_callbacks
from triptych.training.schedules import EpochSchedule, is_constant, make_schedule

# BatchNorm scale/shift and biases are not decayed (Goyal et al. 2017; timm does the same).
NO_DECAY_VARIABLES = ["gamma", "beta", "bias"]


def make_optimizer(cfg: TrainingConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    return _optimizer(cfg, _schedule(cfg, steps_per_epoch))


def _schedule(cfg: TrainingConfig, steps_per_epoch: int):
    return make_schedule(cfg.schedule, cfg.learning_rate, steps_per_epoch, cfg.epochs, cfg.warmup_epochs, cfg.step_epochs)


def _optimizer(cfg: TrainingConfig, lr) -> keras.optimizers.Optimizer:
    weight_decay = cfg.weight_decay or None
    ema = {"use_ema": True, "ema_momentum": cfg.ema_momentum} if cfg.ema else {}
    if cfg.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(
            lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=weight_decay, **ema
        )
    elif cfg.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay, **ema)
    else:
        optimizer = keras.optimizers.Adam(lr, weight_decay=weight_decay, **ema)
    if weight_decay:
        optimizer.exclude_from_weight_decay(var_names=NO_DECAY_VARIABLES)
    return optimizer


@dataclass(frozen=True)
class _Compiled:
    key: tuple  # what the compiled training step depends on (_compile_key)
    schedule: object  # the optimizer's EpochSchedule, or a float learning rate


# What each model was last compiled for by compile_model. A model is the key: per-object state that
# dies with the model, so that fit can tell a model a budget warm-up compiled (and traced) for it.
_compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compile_model(model: keras.Model, cfg: TrainingConfig, steps_per_epoch: int) -> None:
    schedule = _schedule(cfg, steps_per_epoch)
    model.compile(
        optimizer=_optimizer(cfg, schedule),
        # float32 under mixed precision too; with fp16 Keras wraps the optimizer in a LossScaleOptimizer.
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing, dtype="float32"),
        metrics=["accuracy"],
    )
    _build_loss_and_metrics(model)
    _compiled[model] = _Compiled(_compile_key(model, cfg, steps_per_epoch), schedule)


def _build_loss_and_metrics(model: keras.Model) -> None:
    """Create the compiled loss's and metrics' variables now, from the model's input and output specs.

    Why: without a distribution strategy Keras creates them inside the first traced training step,
    and a tf.function that creates variables is traced twice. Measured on 2 cores (AMD EPYC, bf16,
    DenseNet-121 at 64 px, batch 30): the first ``fit`` step took 39.9 s with the second trace, 30.7 s
    without. Under a strategy Keras builds them itself before tracing (``_maybe_symbolic_build``).
    """
    if getattr(model, "_distribute_strategy", None) is not None or not hasattr(model, "_symbolic_build"):
        return
    try:
        inputs, outputs = model.inputs, model.outputs  # symbolic already; Keras copies their specs
    except (AttributeError, ValueError):  # a subclassed or unbuilt model: Keras builds them when tracing
        return
    if len(outputs) != 1:
        return
    targets = keras.KerasTensor(outputs[0].shape, "float32")
    model._symbolic_build(data_batch=(inputs[0] if len(inputs) == 1 else inputs, targets, None))


def compile_or_retime(model: keras.Model, cfg: TrainingConfig, steps_per_epoch: int) -> bool:
    """Compile ``model`` for ``cfg``; or, when it is compiled for the same training but other epochs
    and its optimizer has not taken a step (as a budget's warm-up leaves it), fit the schedule to
    ``cfg``'s epochs instead, so that ``fit`` keeps the training step the warm-up traced (a trace
    costs up to a minute on a CPU). True when it was retimed, not compiled."""
    compiled = _compiled.get(model)
    optimizer = getattr(model, "optimizer", None)
    reusable = (
        compiled is not None and optimizer is not None and compiled.key == _compile_key(model, cfg, steps_per_epoch)
        and int(optimizer.iterations.numpy()) == 0
        and (not isinstance(compiled.schedule, EpochSchedule) or len(cfg.step_epochs) <= compiled.schedule.slots)
    )
    if not reusable:
        compile_model(model, cfg, steps_per_epoch)
        return False
    if isinstance(compiled.schedule, EpochSchedule):
        compiled.schedule.retime(cfg.epochs, cfg.warmup_epochs, cfg.step_epochs)
    return True


def _compile_key(model: keras.Model, cfg: TrainingConfig, steps_per_epoch: int) -> tuple:
    """Everything the compiled step depends on but the schedule's length: the optimizer and loss, the
    schedule's kind, and which variables train."""
    optimizer = cfg.model_dump(include={"optimizer", "learning_rate", "momentum", "nesterov", "weight_decay",
                                        "schedule", "label_smoothing", "ema", "ema_momentum"})
    constant = is_constant(cfg.schedule, steps_per_epoch, cfg.warmup_epochs)
    return (tuple(sorted(optimizer.items())), constant, steps_per_epoch, tuple(v.path for v in model.trainable_variables))


@dataclass(frozen=True)
class RunFiles:
    """Where the trainer keeps its state inside a run directory."""

    history: Path
    best_weights: Path
    backup_dir: Path
    tensorboard_dir: Path


def fit(
    model: keras.Model,
    train_ds,
    val_ds,
    cfg: TrainingConfig,
    files: RunFiles,
    *,
    steps_per_epoch: int,
    verbose: int | None = None,
    history_extra: dict | None = None,
    epoch_offset: int = 0,
    monitor: str = "val_accuracy",
    save_model: keras.Model | None = None,
    class_weight: dict[int, float] | None = None,
) -> BestCheckpoint:
    """Train with every safety callback; returns the best-checkpoint callback (epoch, weights path).

    A killed run resumes from ``files.backup_dir`` on the next call with the same files.
    With ``cfg.ema`` the validation, the best checkpoint and the final weights are the
    weights' moving average. ``class_weight`` (``{class index: weight}``) weights the training loss.
    """
    compile_or_retime(model, cfg, steps_per_epoch)
    best = BestCheckpoint(files.best_weights, monitor=monitor, epoch_offset=epoch_offset, save_model=save_model)
    ema_in, ema_out = ema_callbacks(cfg.ema)
    callbacks: list[keras.callbacks.Callback] = [
        # First: several replicas average their BatchNorm statistics before validation and checkpoints.
        *sync_batchnorm_callbacks(model),
        HistoryWriter(files.history, extra=history_extra, epoch_offset=epoch_offset),
        *ema_in,  # the averaged weights in the model for validation and the checkpoint
        best,
    ]
    if cfg.early_stopping:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor=cfg.early_stopping.monitor, patience=cfg.early_stopping.patience)
        )
    if cfg.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(files.tensorboard_dir)))
    callbacks.extend(ema_out)  # the backup holds the raw weights, with their average in the optimizer
    # Last, so that a kill between callbacks re-runs (and rewrites) an epoch rather than skipping it.
    callbacks.append(EpochBackup(files.backup_dir))  # the same epoch restored on every worker
    model.fit(
        without_autotune_wait(train_ds),
        validation_data=without_autotune_wait(val_ds),
        epochs=cfg.epochs,
        callbacks=callbacks,
        class_weight=class_weight,
        verbose=progress_verbosity() if verbose is None else verbose,
    )
    return best


def balanced_class_weights(labels: np.ndarray) -> dict[int, float]:
    """``{class index: n_samples / (n_classes * count)}`` over the classes present in ``labels``
    (integer class indices), as scikit-learn's ``class_weight="balanced"``."""
    classes = np.unique(labels)
    weights = compute_class_weight("balanced", classes=classes, y=labels)
    return {int(c): float(w) for c, w in zip(classes, weights)}


def without_autotune_wait(dataset):
    """The dataset with tf.data's autotuning thread off.

    Measured on TF 2.21 (CPU): when Keras drops an epoch's iterator, it waits for that thread's
    next wake-up, whose period doubles from 10 ms -- up to ~5 s lost per train and validation
    iterator, i.e. per epoch (a 3 s epoch took 5.1 s; fit calls end on 10 ms x (2^k - 1)).
    Without it, AUTOTUNE map parallelism is all cores and prefetch buffers still grow on demand:
    the same input throughput (WikiArt JPEGs, 2 cores: ~610 img/s either way).
    """
    if not isinstance(dataset, tf.data.Dataset):
        return dataset
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def progress_verbosity() -> int:
    """A live progress bar on a terminal; one line per epoch in logs and CI."""
    return 1 if sys.stdout.isatty() else 2


def steps_for(num_examples: int, batch_size: int) -> int:
    return max(math.ceil(num_examples / batch_size), 1)
