"""Frozen-feature cache for phase 1 of fine-tuning.

While the backbone is frozen it is a fixed function, so running it on every image in every
epoch is wasted work: compute its pooled features once per image (one clean view, or K augmented
views; optionally in bfloat16), keep them on disk keyed by everything that determines them,
and train the head on the cache. On a CPU this turns hours into minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from triptych.cache import CACHE_ENV
from triptych.io import atomic_path
from triptych.models.forward import forward_function


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "triptych" / "features")


@dataclass(frozen=True)
class CacheKey:
    """Everything the cached features depend on; its hash names the cache file."""

    model: str
    weights: str  # weights origin incl. file sha256
    image_size: int
    preprocessing: str
    data_fingerprint: str
    views: int
    augment: str
    seed: int
    dtype: str

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:24]


def feature_extractor(model: keras.Model) -> keras.Model:
    """The frozen part of a backbone+head model: image -> pooled features (``avg_pool``)."""
    return keras.Model(model.input, model.get_layer("avg_pool").output, name=f"{model.name}_features")


@contextmanager
def dtype_policy(name: str):
    """Temporarily build layers under a dtype policy (Keras keeps it as global state)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def extractor_in_dtype(model: keras.Model, rebuild: Callable[[], keras.Model], dtype: str) -> keras.Model:
    """A feature extractor computing in ``dtype``; bfloat16 rebuilds the model under the
    ``mixed_bfloat16`` policy and copies the weights (variables stay float32)."""
    if dtype == "float32":
        return feature_extractor(model)
    with dtype_policy("mixed_bfloat16"):
        twin = rebuild()
    twin.set_weights(model.get_weights())
    return feature_extractor(twin)


def cached_features(
    key: CacheKey,
    compute: Callable[[], tuple[np.ndarray, np.ndarray]],
    cache_dir: Path | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(features, labels, hit)``: from the cache file if present, else computed and stored."""
    path = (cache_dir or default_cache_dir()) / f"{key.model}-{key.digest()}.npz"
    if path.exists():
        try:
            with np.load(path) as stored:
                return stored["features"], stored["labels"], True
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a damaged cache file is recomputed, never trusted
    features, labels = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, features=features.astype(np.float32), labels=labels, key=json.dumps(key.__dict__))
    return features, labels, False


def extract(extractor: keras.Model, datasets: list) -> tuple[np.ndarray, np.ndarray]:
    """Run the extractor over one or more (image, one-hot label) datasets (e.g. K augmented views).

    A plain forward pass, not ``predict_on_batch``: under a tf.distribute strategy that hands
    every replica the whole batch and gathers their outputs, i.e. N rows per image with N
    replicas. Each worker of a multi-worker run computes the same features this way."""
    forward = forward_function(extractor)
    features, labels = [], []
    for dataset in datasets:
        # One pass, so features and labels line up even when the dataset reshuffles per iteration.
        for images, onehot in dataset:
            features.append(tf.cast(forward(images), tf.float32).numpy())
            labels.append(np.asarray(onehot))
    return np.concatenate(features), np.concatenate(labels)


def head_model(model: keras.Model, feature_dim: int) -> keras.Model:
    """Dropout + Dense on pooled features, sharing the full model's head layers (so training
    the head on the cache trains the full model's head)."""
    inputs = keras.Input(shape=(feature_dim,), name="features")
    x = model.get_layer("head_dropout")(inputs)
    outputs = model.get_layer("predictions")(x)
    return keras.Model(inputs, outputs, name=f"{model.name}_head")
