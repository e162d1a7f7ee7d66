"""The training phases of an experiment, as one continuous history.

- A model from scratch (or a backbone that starts from random weights) trains end to end
  in one phase (``train``).
- A pretrained backbone trains in two phases, as the Keras transfer-learning guide
  recommends: ``head`` (backbone frozen; on cached features when enabled) and
  ``fine-tune`` (the last blocks unfrozen, BatchNorm still frozen, small learning rate,
  early stopping). Phase 2 starts from the best phase-1 weights.

Each phase has its own BackupAndRestore directory and the manifest records finished
phases, so a killed run resumes in the right phase with no epoch lost or repeated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import tensorflow as tf

from triptych.config import EarlyStoppingConfig, ExperimentConfig, TrainingConfig
from triptych.rundir import RunDir
from triptych.training.callbacks import best_checkpoint_epoch, load_model_weights, read_history_rows
from triptych.training.feature_cache import CacheKey, cached_features, extract, extractor_in_dtype, head_model
from triptych.training.trainer import RunFiles, fit, steps_for

Log = Callable[[str], None]


@dataclass(frozen=True)
class PhaseData:
    """What the phases need from the data side (built by the runner)."""

    make: Callable[..., tf.data.Dataset]  # make(split, training, seed=None, augment=None)
    num_train: int
    batch_size: int
    fingerprint: str
    preprocessing: str
    augment: str
    image_size: int
    seed: int


def train_phases(
    model: keras.Model,
    exp: ExperimentConfig,
    run: RunDir,
    data: PhaseData,
    *,
    frozen_base: bool,
    weights_origin: str,
    rebuild: Callable[[], keras.Model],
    on_elapsed: Callable[[float], None],
    log: Log = print,
) -> int | None:
    """Run every phase that is not finished yet; returns the best epoch (on validation)."""
    cfg = exp.training
    done = set(run.read_manifest().get("phases_done", []))
    first = "head" if frozen_base else "train"
    if first not in done:
        if frozen_base:
            model.get_layer("base").trainable = False
        if frozen_base and cfg.feature_cache:
            _fit_head_on_cache(model, exp, run, data, weights_origin, rebuild, on_elapsed, log)
        else:
            fit(
                model,
                data.make("train", True),
                data.make("val", False),
                cfg,
                _files(run, first),
                steps_per_epoch=steps_for(data.num_train, data.batch_size),
                on_elapsed=on_elapsed,
                history_extra={"phase": first},
            )
        _mark_done(run, first)
    if cfg.fine_tune is None:
        return _best_epoch(run)
    if not frozen_base:
        log(f"[{exp.name}] fine_tune skipped: the backbone was trained end to end (no pretrained weights)")
        return _best_epoch(run)
    if "fine-tune" not in done:
        _fine_tune(model, exp, run, data, on_elapsed, log)
        _mark_done(run, "fine-tune")
    return _best_epoch(run)


def _fine_tune(model, exp: ExperimentConfig, run: RunDir, data: PhaseData, on_elapsed, log: Log) -> None:
    from triptych.models.pretrained import unfreeze

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
        _files(run, "fine-tune"),
        steps_per_epoch=steps_for(data.num_train, data.batch_size),
        on_elapsed=on_elapsed,
        history_extra={"phase": "fine-tune"},
        epoch_offset=_epochs_so_far(run, before="fine-tune"),
    )


def _fit_head_on_cache(model, exp, run: RunDir, data: PhaseData, weights_origin, rebuild, on_elapsed, log: Log) -> None:
    cfg = exp.training
    started = time.perf_counter()
    extractor = extractor_in_dtype(model, rebuild, cfg.cache_dtype)

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
    seconds = time.perf_counter() - started
    on_elapsed(seconds)
    run.update_manifest(
        feature_cache={
            "train_features": list(train_x.shape),
            "views": cfg.cache_views,
            "dtype": cfg.cache_dtype,
            "hit": bool(hit_train and hit_val),
            "seconds": round(seconds, 2),
        }
    )
    log(
        f"[{exp.name}] phase 1 on cached features {train_x.shape} "
        f"({'from cache' if hit_train and hit_val else f'computed in {seconds:.0f}s'})"
    )
    head = head_model(model, train_x.shape[1])
    train_ds = (
        tf.data.Dataset.from_tensor_slices((train_x, train_y))
        .shuffle(len(train_x), seed=data.seed, reshuffle_each_iteration=True)
        .batch(data.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    val_ds = tf.data.Dataset.from_tensor_slices((val_x, val_y)).batch(data.batch_size)
    fit(
        head,
        train_ds,
        val_ds,
        cfg,
        _files(run, "head"),
        steps_per_epoch=steps_for(len(train_x), data.batch_size),
        on_elapsed=on_elapsed,
        history_extra={"phase": "head"},
        save_model=model,  # the best checkpoint holds the full model's weights
    )


def _files(run: RunDir, phase: str) -> RunFiles:
    return RunFiles(run.history, run.best_weights, run.backup_dir / phase, run.root / "tensorboard" / phase)


def _mark_done(run: RunDir, phase: str) -> None:
    done = list(run.read_manifest().get("phases_done", []))
    if phase not in done:
        done.append(phase)
    run.update_manifest(phases_done=done)


def _epochs_so_far(run: RunDir, before: str) -> int:
    return sum(1 for row in read_history_rows(run.history) if row.get("phase") != before)


def _best_epoch(run: RunDir) -> int | None:
    return best_checkpoint_epoch(run.best_weights)
