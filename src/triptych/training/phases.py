"""The training phases of an experiment, as one continuous history.

- A model from scratch (or a backbone that starts from random weights) trains end to end
  in one phase (``train``).
- A pretrained backbone trains in two phases, as the Keras transfer-learning guide
  recommends: ``head`` (backbone frozen; on cached features when enabled) and
  ``fine-tune`` (the last blocks unfrozen, BatchNorm still frozen, small learning rate,
  early stopping). Phase 2 starts from the best phase-1 weights.

Each phase has its own BackupAndRestore directory. The runner runs the phases of
:func:`plan_phases` one by one with :func:`run_phase` and records each finished one, so a
killed run resumes in the right phase with no epoch lost or repeated. Nothing here writes
the run record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import tensorflow as tf

from triptych.config import EarlyStoppingConfig, ExperimentConfig, TrainingConfig
from triptych.models import build
from triptych.models.pretrained import unfreeze
from triptych.rundir import FeatureCacheInfo, RunDir
from triptych.training.callbacks import load_model_weights, read_history_rows
from triptych.training.feature_cache import CacheKey, cached_features, extract, extractor_in_dtype, head_model
from triptych.training.trainer import RunFiles, fit, steps_for

Log = Callable[[str], None]

TRAIN, HEAD, FINE_TUNE = "train", "head", "fine-tune"


@dataclass(frozen=True)
class PhaseData:
    """What the phases need from the data side (built by the runner)."""

    make: Callable[..., tf.data.Dataset]  # make(split, training, seed=None)
    num_train: int
    batch_size: int
    fingerprint: str
    preprocessing: str
    augment: str
    image_size: int
    seed: int
    class_weight: dict[int, float] | None = None  # training.class_weight as {class index: weight}; None: equal


@dataclass(frozen=True)
class PhaseOutcome:
    """What a finished phase reports back to the runner."""

    phase: str
    feature_cache: FeatureCacheInfo | None = None  # the head phase on cached features


def plan_phases(training: TrainingConfig, frozen_base: bool) -> list[str]:
    """The phases of an experiment, in order: ``train``, or ``head`` (then ``fine-tune``)."""
    if not frozen_base:
        return [TRAIN]
    return [HEAD, FINE_TUNE] if training.fine_tune else [HEAD]


def run_phase(
    phase: str, model: keras.Model, exp: ExperimentConfig, run: RunDir, data: PhaseData, *, weights_origin: str, log: Log = print
) -> PhaseOutcome:
    """Train ``model`` through one phase (continuing its backup if a run was killed in it)."""
    if phase == FINE_TUNE:
        _fine_tune(model, exp, run, data, log)
        return PhaseOutcome(phase)
    if phase == HEAD:
        model.get_layer("base").trainable = False
        if exp.training.feature_cache:
            return PhaseOutcome(phase, _fit_head_on_cache(model, exp, run, data, weights_origin, log))
    fit(
        model,
        data.make("train", True),
        data.make("val", False),
        exp.training,
        _files(run, phase),
        steps_per_epoch=steps_for(data.num_train, data.batch_size),
        history_extra={"phase": phase},
        class_weight=data.class_weight,
    )
    return PhaseOutcome(phase)


def _fine_tune(model: keras.Model, exp: ExperimentConfig, run: RunDir, data: PhaseData, log: Log) -> None:
    ft = exp.training.fine_tune
    if run.best_weights.exists():
        load_model_weights(model, run.best_weights)  # start from the best head
    count = unfreeze(model, ft.unfreeze_blocks, ft.unfreeze_layers)
    log(f"[{exp.name}] fine-tune: {count} backbone layers unfrozen (BatchNorm stays frozen), lr {ft.learning_rate:g}")
    cfg = TrainingConfig(
        epochs=ft.epochs,
        optimizer=ft.optimizer,
        learning_rate=ft.learning_rate,
        weight_decay=0.0,
        schedule="constant",
        label_smoothing=exp.training.label_smoothing,
        ema=exp.training.ema,
        ema_momentum=exp.training.ema_momentum,
        early_stopping=EarlyStoppingConfig(patience=ft.early_stopping_patience, monitor="val_loss")
        if ft.early_stopping_patience
        else None,
        tensorboard=exp.training.tensorboard,
    )
    fit(
        model,
        data.make("train", True),
        data.make("val", False),
        cfg,
        _files(run, FINE_TUNE),
        steps_per_epoch=steps_for(data.num_train, data.batch_size),
        history_extra={"phase": FINE_TUNE},
        epoch_offset=_epochs_before(run, FINE_TUNE),
        class_weight=data.class_weight,
    )


def _fit_head_on_cache(
    model: keras.Model, exp: ExperimentConfig, run: RunDir, data: PhaseData, weights_origin: str, log: Log
) -> FeatureCacheInfo:
    (train_x, train_y), (val_x, val_y), info = _head_features(model, exp, data, weights_origin)
    log(
        f"[{exp.name}] phase 1 on cached features {train_x.shape} "
        f"({'from cache' if info.hit else f'computed in {info.seconds:.0f}s'})"
    )
    train_ds = (
        tf.data.Dataset.from_tensor_slices((train_x, train_y))
        .shuffle(len(train_x), seed=data.seed, reshuffle_each_iteration=True)
        .batch(data.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    val_ds = tf.data.Dataset.from_tensor_slices((val_x, val_y)).batch(data.batch_size)
    fit(
        head_model(model, train_x.shape[1]),
        train_ds,
        val_ds,
        exp.training,
        _files(run, HEAD),
        steps_per_epoch=steps_for(len(train_x), data.batch_size),
        history_extra={"phase": HEAD},
        save_model=model,  # the best checkpoint holds the full model's weights
        class_weight=data.class_weight,
    )
    return info


def _head_features(model: keras.Model, exp: ExperimentConfig, data: PhaseData, weights_origin: str):
    """The frozen backbone's features of the train (K views) and val images, from the cache or computed."""
    cfg = exp.training
    started = time.perf_counter()

    def twin() -> keras.Model:  # the same architecture, built again under another dtype policy
        shape = (data.image_size, data.image_size, 3)
        return build(exp.model.name, model.output_shape[-1], shape, weights=None, **exp.model.options)

    extractor = extractor_in_dtype(model, twin, cfg.cache_dtype)

    def key(split: str, views: int) -> CacheKey:
        return CacheKey(
            model=exp.model.name,
            weights=weights_origin,
            image_size=data.image_size,
            preprocessing=data.preprocessing,
            data_fingerprint=f"{split}:{data.fingerprint}",
            views=views,
            augment=data.augment if views > 1 else "none",
            seed=data.seed,
            # A model built under a mixed policy computes its features in that precision.
            dtype=cfg.cache_dtype if cfg.precision == "fp32" else cfg.precision,
        )

    def train_views():
        if cfg.cache_views == 1:
            return extract(extractor, [data.make("train", False)])
        return extract(extractor, [data.make("train", True, seed=data.seed + v) for v in range(cfg.cache_views)])

    train_x, train_y, hit_train = cached_features(key("train", cfg.cache_views), train_views)
    val_x, val_y, hit_val = cached_features(key("val", 1), lambda: extract(extractor, [data.make("val", False)]))
    info = FeatureCacheInfo(
        train_features=list(train_x.shape),
        views=cfg.cache_views,
        dtype=cfg.cache_dtype,
        hit=bool(hit_train and hit_val),
        seconds=round(time.perf_counter() - started, 2),
    )
    return (train_x, train_y), (val_x, val_y), info


def _files(run: RunDir, phase: str) -> RunFiles:
    return RunFiles(run.history, run.best_weights, run.backup_dir / phase, run.tensorboard_dir / phase)


def _epochs_before(run: RunDir, phase: str) -> int:
    return sum(1 for row in read_history_rows(run.history) if row.get("phase") != phase)
