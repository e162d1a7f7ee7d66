"""Compile and fit a model: optimizer, LR schedule, loss, and the callbacks that make a run
resumable (BackupAndRestore), inspectable (history.csv) and selectable (best checkpoint)."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from triptych.config import TrainingConfig
from triptych.training.callbacks import BestCheckpoint, ElapsedTime, HistoryWriter
from triptych.training.schedules import make_schedule

# BatchNorm scale/shift and biases are not decayed (Goyal et al. 2017; timm does the same).
NO_DECAY_VARIABLES = ["gamma", "beta", "bias"]


def make_optimizer(cfg: TrainingConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    lr = make_schedule(
        cfg.schedule, cfg.learning_rate, steps_per_epoch, cfg.epochs, cfg.warmup_epochs, cfg.step_epochs
    )
    weight_decay = cfg.weight_decay or None
    if cfg.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=weight_decay)
    elif cfg.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = keras.optimizers.Adam(lr, weight_decay=weight_decay)
    if weight_decay:
        optimizer.exclude_from_weight_decay(var_names=NO_DECAY_VARIABLES)
    return optimizer


def compile_model(model: keras.Model, cfg: TrainingConfig, steps_per_epoch: int) -> None:
    model.compile(
        optimizer=make_optimizer(cfg, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )


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
    on_elapsed: Callable[[float], None],
    verbose: int | None = None,
    history_extra: dict | None = None,
    epoch_offset: int = 0,
    monitor: str = "val_accuracy",
    save_model: keras.Model | None = None,
) -> BestCheckpoint:
    """Train with every safety callback; returns the best-checkpoint callback (epoch, weights path).

    A killed run resumes from ``files.backup_dir`` on the next call with the same files.
    """
    compile_model(model, cfg, steps_per_epoch)
    best = BestCheckpoint(files.best_weights, monitor=monitor, epoch_offset=epoch_offset, save_model=save_model)
    callbacks: list[keras.callbacks.Callback] = [
        HistoryWriter(files.history, extra=history_extra, epoch_offset=epoch_offset),
        best,
        ElapsedTime(on_elapsed),
    ]
    if cfg.early_stopping:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor=cfg.early_stopping.monitor, patience=cfg.early_stopping.patience)
        )
    if cfg.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(files.tensorboard_dir)))
    # Last, so that a kill between callbacks re-runs (and rewrites) an epoch rather than skipping it.
    callbacks.append(keras.callbacks.BackupAndRestore(
            str(files.backup_dir), double_checkpoint=True, delete_checkpoint=False  # the runner deletes it once done
        ))
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=cfg.epochs,
        callbacks=callbacks,
        verbose=progress_verbosity() if verbose is None else verbose,
    )
    return best


def progress_verbosity() -> int:
    """A live progress bar on a terminal; one line per epoch in logs and CI."""
    return 1 if sys.stdout.isatty() else 2


def steps_for(num_examples: int, batch_size: int) -> int:
    return max(math.ceil(num_examples / batch_size), 1)
