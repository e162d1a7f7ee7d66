"""The training phases of an experiment, as one continuous history.

- A model from scratch (or a backbone that starts from random weights) trains end to end
  in one phase (``train``).
- A pretrained backbone trains in two phases, as the Keras transfer-learning guide
  recommends: ``head`` (backbone frozen; on cached features when enabled) and
  ``fine-tune`` (the last blocks unfrozen, BatchNorm still frozen, small learning rate,
  early stopping; on cached activations of the frozen trunk below them when possible, see
  :mod:`triptych.training.trunk_cache`). Phase 2 starts from the best phase-1 weights.

Each phase has its own backup directory. The runner runs the phases of
:func:`plan_phases` one by one with :func:`run_phase` and records each finished one, so a
killed run resumes in the right phase with no epoch lost or repeated. Nothing here writes
the run record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from triptych.config import EarlyStoppingConfig, ExperimentConfig, TrainingConfig
from triptych.errors import InvalidArgumentError
from triptych.models import build
from triptych.models.pretrained import unfreeze
from triptych.rundir import FeatureCacheInfo, RunDir, TrunkCacheInfo
from triptych.training.callbacks import load_model_weights, read_history_rows
from triptych.training.feature_cache import CacheKey, cached_features, extract, extractor_in_dtype, head_model
from triptych.training.trainer import RunFiles, fit, steps_for
from triptych.training.trunk_cache import (
    TrunkKey,
    TrunkRangeError,
    TrunkSplit,
    cached_trunk,
    outputs_on_cache,
    pooled_features,
    split_model,
    trunk_dataset,
    weights_digest,
)

Log = Callable[[str], None]

TRAIN, HEAD, FINE_TUNE = "train", "head", "fine-tune"


@dataclass(frozen=True)
class PhaseData:
    """What the phases need from the data side (built by the runner)."""

    make: Callable[..., tf.data.Dataset]  # make(split, training, seed=None)
    num_train: int
    num_val: int
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
    trunk_cache: TrunkCacheInfo | None = None  # the fine-tune phase on cached trunk activations


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
        return PhaseOutcome(phase, trunk_cache=_fine_tune(model, exp, run, data, weights_origin, log))
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


def _fine_tune(
    model: keras.Model, exp: ExperimentConfig, run: RunDir, data: PhaseData, weights_origin: str, log: Log
) -> TrunkCacheInfo | None:
    """Phase 2, on cached trunk activations when the frozen layers below the unfrozen ones allow."""
    ft = exp.training.fine_tune
    if run.best_weights.exists():
        load_model_weights(model, run.best_weights)  # start from the best head
    count = unfreeze(model, ft.unfreeze_blocks, ft.unfreeze_layers)
    log(f"[{exp.name}] fine-tune: {count} backbone layers unfrozen (BatchNorm stays frozen), lr {ft.learning_rate:g}")
    cfg = fine_tune_config(exp)
    files = _files(run, FINE_TUNE)
    steps = steps_for(data.num_train, data.batch_size)
    offset = _epochs_before(run, FINE_TUNE)
    cached = _trunk_inputs(model, exp, data, weights_origin, log)
    if cached is None:
        fit(model, data.make("train", True), data.make("val", False), cfg, files, steps_per_epoch=steps,
            history_extra={"phase": FINE_TUNE}, epoch_offset=offset, class_weight=data.class_weight)
        return None
    top, train_ds, val_ds, info = cached
    # The best checkpoint holds the full model's weights: model.keras stays the whole model.
    fit(top, train_ds, val_ds, cfg, files, steps_per_epoch=steps, history_extra={"phase": FINE_TUNE},
        epoch_offset=offset, save_model=model, class_weight=data.class_weight)
    return info


def fine_tune_config(exp: ExperimentConfig) -> TrainingConfig:
    """What phase 2 trains with: ``fine_tune``'s optimizer, a constant learning rate, early stopping."""
    ft = exp.training.fine_tune
    return TrainingConfig(
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


def trunk_views(exp: ExperimentConfig) -> int:
    """``fine_tune.cache_views``, or its default: 2 augmented views when data.augment does
    anything, else 1 clean view."""
    ft = exp.training.fine_tune
    if ft.cache_views is not None:
        return ft.cache_views
    return 2 if exp.data.augment.varies_images else 1


def _trunk_inputs(
    model: keras.Model, exp: ExperimentConfig, data: PhaseData, weights_origin: str, log: Log
) -> tuple[keras.Model, tf.data.Dataset, tf.data.Dataset, TrunkCacheInfo] | None:
    """``(top, train dataset, val dataset, info)`` on the trunk cache, or None: trunk_cache is
    off, nothing below the unfrozen layers is frozen, or the activations exceed float16."""
    ft = exp.training.fine_tune
    if ft.trunk_cache is False:
        return None
    try:
        split = split_model(model, ft.unfreeze_blocks, ft.unfreeze_layers)
        (train, val), info = _trunk_arrays(split, exp, data, weights_origin)
    except (InvalidArgumentError, TrunkRangeError) as err:
        log(f"[{exp.name}] fine-tune on images, not on a trunk cache: {err}")
        return None
    shape = "x".join(str(d) for d in info.train_shapes[0])
    log(f"[{exp.name}] fine-tune on cached trunk activations {shape} ({info.views} view(s); "
        f"{'from cache' if info.hit else f'computed in {info.seconds:.0f}s'})")
    return split.top, trunk_dataset(train, data.batch_size, seed=data.seed), trunk_dataset(val, data.batch_size), info


def _trunk_arrays(split: TrunkSplit, exp: ExperimentConfig, data: PhaseData, weights_origin: str):
    """The trunk's activations of the training views and the clean validation view."""
    views = trunk_views(exp)
    started = time.perf_counter()
    trunk_weights = weights_digest(split.trunk)

    def key(split_name: str, count: int) -> TrunkKey:
        return _trunk_key(split, exp, data, weights_origin, trunk_weights, f"{split_name}:{data.fingerprint}", count)

    # One clean view, or K augmented views each with its own seed.
    train_sets = [data.make("train", False)] if views == 1 else [
        data.make("train", True, seed=data.seed + v) for v in range(views)
    ]
    train, hit_train = cached_trunk(key("train", views), split.trunk, train_sets, data.num_train)
    val, hit_val = cached_trunk(key("val", 1), split.trunk, [data.make("val", False)], data.num_val)
    info = TrunkCacheInfo(
        tensors=split.tensors,
        train_shapes=[list(t.shape) for t in train.tensors],
        views=views,
        dtype=str(train.tensors[0].dtype),
        hit=bool(hit_train and hit_val),
        seconds=round(time.perf_counter() - started, 2),
    )
    return (train, val), info


def _trunk_key(
    split: TrunkSplit, exp: ExperimentConfig, data: PhaseData, weights_origin: str, trunk_weights: str,
    fingerprint: str, views: int,
) -> TrunkKey:
    return TrunkKey(
        model=exp.model.name,
        weights=weights_origin,
        trunk_weights=trunk_weights,
        image_size=data.image_size,
        preprocessing=data.preprocessing,
        tensors=tuple(split.tensors),
        data_fingerprint=fingerprint,
        views=views,
        augment=data.augment if views > 1 else "none",
        seed=data.seed,
        precision=exp.training.precision,
    )


def trunk_test_probabilities(
    model: keras.Model, exp: ExperimentConfig, data: PhaseData, weights_origin: str, *, test_fingerprint: str,
    num_test: int,
) -> np.ndarray | None:
    """The test images' class probabilities as the fine-tuned model's top computes them on the frozen
    trunk's cached activations, or None (phase 2 trained on images; activations beyond float16).

    Why: the trunk's weights are frozen, so its activations of the test images are the same before and
    after fine-tuning; a rerun with a warm cache then predicts with the top blocks alone (Xception at
    128 px, 899 paintings, 2 cores: ~20 s through the whole model). The cache stores float16: exact for
    a bfloat16 model's activations in float16's normal range, a rounding (at most 2**-11 relative) for fp32."""
    ft = exp.training.fine_tune
    try:
        split = split_model(model, ft.unfreeze_blocks, ft.unfreeze_layers)
        key = _trunk_key(split, exp, data, weights_origin, weights_digest(split.trunk), f"test:{test_fingerprint}", 1)
        arrays, _ = cached_trunk(key, split.trunk, [data.make("test", False)], num_test)
    except (InvalidArgumentError, TrunkRangeError):
        return None
    return outputs_on_cache(split.top, arrays, data.batch_size)


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


def shares_trunk_cache(exp: ExperimentConfig) -> bool:
    """Whether the head phase reads its features off phase 2's trunk cache: phase 2 caches the trunk
    and the head wants the same views of the same images, in the model's own precision."""
    ft, cfg = exp.training.fine_tune, exp.training
    return (ft is not None and ft.trunk_cache is not False and cfg.feature_cache and cfg.cache_dtype == "float32"
            and trunk_views(exp) == cfg.cache_views)


def _features_from_trunk(model: keras.Model, exp: ExperimentConfig, data: PhaseData, weights_origin: str):
    """The head phase's features as the frozen top blocks' pooled output on the trunk cache (built
    here, read again by phase 2): one backbone pass over the images serves both phases. None when the
    model has no trunk to cache (phase 2 then says why and fine-tunes on images)."""
    ft = exp.training.fine_tune
    started = time.perf_counter()
    try:
        split = split_model(model, ft.unfreeze_blocks, ft.unfreeze_layers)
        (train, val), trunk = _trunk_arrays(split, exp, data, weights_origin)
    except (InvalidArgumentError, TrunkRangeError):
        return None
    train_x = pooled_features(split, train, data.batch_size)
    val_x = pooled_features(split, val, data.batch_size)
    info = FeatureCacheInfo(train_features=list(train_x.shape), views=train.views, dtype=exp.training.cache_dtype,
                            hit=trunk.hit, seconds=round(time.perf_counter() - started, 2))
    return (train_x, train.labels), (val_x, val.labels), info


def _head_features(model: keras.Model, exp: ExperimentConfig, data: PhaseData, weights_origin: str):
    """The frozen backbone's features of the train (K views) and val images, from the cache or computed."""
    from_trunk = _features_from_trunk(model, exp, data, weights_origin) if shares_trunk_cache(exp) else None
    if from_trunk is not None:
        return from_trunk
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
