"""Trunk cache for phase 2 of fine-tuning.

When phase 2 unfreezes only the top blocks of a backbone, everything below them -- the trunk:
frozen weights, BatchNorm in inference mode -- gives an image the same activations in every
epoch. :func:`split_model` cuts the model there: ``trunk`` (image -> the trunk tensors the top
reads; residual and dense connections can make that several) and ``top`` (those tensors ->
class probabilities), both built from the SAME layer objects as the full model, so training
``top`` trains the full model's weights and the saved model stays the ordinary whole model.

:func:`cached_trunk` runs the trunk once per image view (a plain forward pass: one row per
image under any tf.distribute strategy) and keeps its activations on disk as float16 ``.npy``
files under ``$TRIPTYCH_CACHE/trunk/``, read memory-mapped, keyed by everything that
determines them: the trunk's weights (hashed), preprocessing, size, split point, augmentation,
views, seed and the split's image *content*. A build goes to a temporary folder renamed into
place when complete, so a killed build never leaves a folder that is read later.

Views: ``K >= 2`` augmented views per training image, or one clean view (``K = 1``); validation
gets one clean view. Epoch ``e`` trains on view ``e mod K`` of every image, shuffled (see
:func:`trunk_dataset`): an epoch is still one pass over the N training images, with the steps
of an uncached epoch, and the cache is K x N rows rather than N rows a view drawn at random
per image (which would need each view's rows in the same image order; augmented datasets are
shuffled).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from triptych.errors import InvalidArgumentError, TriptychError
from triptych.models.forward import forward_function
from triptych.models.pretrained import unfrozen_layers
from triptych.training.feature_cache import default_cache_dir

STORAGE_DTYPE = np.float16
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_META = "meta.json"


class TrunkRangeError(TriptychError):
    """Trunk activations beyond float16's range: the cache cannot hold them."""


@dataclass(frozen=True)
class TrunkSplit:
    """A backbone+head model cut below its unfrozen layers."""

    trunk: keras.Model  # image -> trunk tensors the top reads
    top: keras.Model  # those tensors -> class probabilities (the full model's layers)
    tensors: list[str]  # the cached tensors, named by the layers that produce them
    pooled: keras.Model  # those tensors -> the pooled features the head reads (the head phase's features)


def split_model(model: keras.Model, blocks=None, last_layers: int | None = None) -> TrunkSplit:
    """Cut ``model`` (a registry backbone nested as layer ``base``, plus head) below the layers
    :func:`~triptych.models.pretrained.unfreeze` opens. Raises InvalidArgumentError when the
    top reads the image itself (nothing frozen below it to cache)."""
    base = model.get_layer("base")
    boundary = _trunk_tensors_read_by_top(base, set(unfrozen_layers(model, blocks, last_layers)))
    if any(tensor is image for tensor in boundary for image in base.inputs):
        raise InvalidArgumentError("fine_tune: the unfrozen layers read the image itself; there is no frozen trunk to cache")
    names = [tensor._keras_history[0].name for tensor in boundary]
    trunk = keras.Model(base.input, _single(boundary), name=f"{model.name}_trunk")
    # Keras clones the graph's nodes here, not its layers: the top computes with the full model's weights.
    base_top = keras.Model(_single(boundary), base.output, name=f"{model.name}_base_top")
    inputs = _single([keras.Input(tuple(t.shape[1:]), name=f"trunk_{name}") for t, name in zip(boundary, names)])
    x = base_top(inputs, training=False)  # BatchNorm in inference mode, as in the full model
    pooled = model.get_layer("avg_pool")(x)
    x = model.get_layer("head_dropout")(pooled)
    outputs = model.get_layer("predictions")(x)
    top = keras.Model(inputs, outputs, name=f"{model.name}_top")
    return TrunkSplit(trunk, top, names, keras.Model(inputs, pooled, name=f"{model.name}_pooled"))


def _trunk_tensors_read_by_top(base: keras.Model, opened: set[str]) -> list:
    """The tensors of ``base``'s graph computed outside the top but read by it. The top is every
    opened layer and everything downstream of one (walked in topological order)."""
    varying: set[int] = set()  # ids of tensors the top computes
    boundary: dict[int, object] = {}
    for depth in sorted(base._nodes_by_depth, reverse=True):  # deepest first: producers before consumers
        for node in base._nodes_by_depth[depth]:
            reads = node.input_tensors
            if node.operation.name not in opened and not any(id(t) in varying for t in reads):
                continue
            varying.update(id(t) for t in node.output_tensors)
            boundary.update({id(t): t for t in reads if id(t) not in varying})
    return list(boundary.values())


def weights_digest(model: keras.Model) -> str:
    """sha256 of a model's weight values: the cache key holds what the trunk computes with."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class TrunkKey:
    """Everything the cached activations depend on; its hash names the cache folder."""

    model: str
    weights: str  # origin, for people reading meta.json
    trunk_weights: str  # weights_digest of the trunk
    image_size: int
    preprocessing: str
    tensors: tuple[str, ...]  # the split point: the cached trunk tensors
    data_fingerprint: str  # content of the split's images
    views: int
    augment: str
    seed: int
    precision: str

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class TrunkArrays:
    """A split's cached activations: ``views`` x ``images`` rows, view-major."""

    tensors: list[np.ndarray]  # float16, memory-mapped
    labels: np.ndarray  # one-hot float32
    views: int
    images: int


def cached_trunk(
    key: TrunkKey, trunk: keras.Model, datasets: list, images: int, cache_dir: Path | None = None
) -> tuple[TrunkArrays, bool]:
    """``(arrays, hit)``: the trunk's activations of ``datasets`` (one per view, each yielding
    ``images`` images) from the cache, else computed and stored first."""
    final = (cache_dir or default_cache_dir()) / "trunk" / f"{key.model}-{key.digest()}"
    cached = _open(final, key, images)
    if cached is not None:
        return cached, True
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_builds(final)
    partial = final.with_name(f"{final.name}.partial-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _build(partial, key, trunk, datasets, images)
        try:
            partial.rename(final)  # atomic: readers see a complete folder or none
        except OSError:
            if not final.is_dir():  # else another worker finished the same build first
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    arrays = _open(final, key, images)
    if arrays is None:
        raise TriptychError(f"trunk cache {final} could not be read back after it was written")
    return arrays, False


def _build(folder: Path, key: TrunkKey, trunk: keras.Model, datasets: list, images: int) -> None:
    folder.mkdir(parents=True)
    forward = forward_function(trunk)
    rows = images * len(datasets)
    stores, labels, filled = None, None, 0
    for dataset in datasets:
        for batch, onehot in dataset:
            outputs = [tf.cast(t, tf.float32).numpy() for t in _as_list(forward(batch))]
            if stores is None:
                stores = [_new_array(folder / f"t{i}.npy", (rows, *o.shape[1:])) for i, o in enumerate(outputs)]
                labels = np.zeros((rows, onehot.shape[-1]), np.float32)
            end = filled + len(outputs[0])
            if end > rows:
                raise TriptychError(f"trunk cache: the datasets hold more than {images} images a view")
            for store, values in zip(stores, outputs):
                if np.abs(values).max(initial=0.0) > _FLOAT16_MAX or not np.isfinite(values).all():
                    raise TrunkRangeError(f"trunk activations of {key.tensors} exceed float16's range")
                store[filled:end] = values
            labels[filled:end] = np.asarray(onehot)
            filled = end
    if filled != rows:
        raise TriptychError(f"trunk cache: expected {rows} rows ({len(datasets)} views x {images} images), got {filled}")
    for store in stores:
        store.flush()
    np.save(folder / "labels.npy", labels)
    meta = {"key": asdict(key), "shapes": [list(s.shape) for s in stores], "dtype": np.dtype(STORAGE_DTYPE).name}
    (folder / _META).write_text(json.dumps(meta), encoding="utf-8")  # last: the mark of a complete build


def _new_array(path: Path, shape: tuple) -> np.ndarray:
    return np.lib.format.open_memmap(path, mode="w+", dtype=STORAGE_DTYPE, shape=shape)


def _open(folder: Path, key: TrunkKey, images: int) -> TrunkArrays | None:
    """The cached arrays if ``folder`` holds a complete build for exactly ``key``; a damaged
    or mismatching folder is deleted (rebuilt, never reused)."""
    if not folder.is_dir():
        return None
    try:
        meta = json.loads((folder / _META).read_text(encoding="utf-8"))
        tensors = [np.load(folder / f"t{i}.npy", mmap_mode="r") for i in range(len(meta["shapes"]))]
        labels = np.load(folder / "labels.npy")
        views = key.views
        expected = [images * views]
        if meta["key"] != json.loads(json.dumps(asdict(key))) or len(tensors) != len(key.tensors):
            raise ValueError("key mismatch")
        if [list(t.shape) for t in tensors] != meta["shapes"] or any(t.dtype != STORAGE_DTYPE for t in tensors):
            raise ValueError("shape mismatch")
        if [len(t) for t in tensors] != expected * len(tensors) or [len(labels)] != expected:
            raise ValueError("row count mismatch")
    except (OSError, ValueError, KeyError, TypeError):
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return TrunkArrays(tensors, labels, views, images)


def _remove_dead_builds(final: Path) -> None:
    """Partial folders this host's killed builds left behind (their process is gone)."""
    prefix = f"{final.name}.partial-{socket.gethostname()}-"
    for partial in final.parent.glob(f"{final.name}.partial-*"):
        pid = partial.name.removeprefix(prefix)
        if partial.name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _single(tensors: list):
    """One tensor as itself (so a one-input model takes a plain tensor), several as a list."""
    return tensors[0] if len(tensors) == 1 else tensors


def _as_list(outputs) -> list:
    return list(outputs) if isinstance(outputs, list | tuple) else [outputs]


def pooled_features(split: TrunkSplit, arrays: TrunkArrays, batch_size: int) -> np.ndarray:
    """float32 pooled features of every cached row, in order: the frozen top blocks run on the
    cache instead of the whole backbone on the images (the head phase's features, at a fraction
    of their cost when phase 2 builds the same cache anyway)."""
    return outputs_on_cache(split.pooled, arrays, batch_size)


def outputs_on_cache(part: keras.Model, arrays: TrunkArrays, batch_size: int) -> np.ndarray:
    """float32 outputs of ``part`` (a model reading the trunk tensors: ``split.top``, ``split.pooled``)
    for every cached row, in order, in inference mode."""
    # The batch size left open: a smaller last batch does not trace the part again.
    specs = [tf.TensorSpec((None, *t.shape[1:]), tf.float32) for t in arrays.tensors]
    forward = tf.function(lambda inputs: part(inputs, training=False), input_signature=[_single(specs)])
    rows = len(arrays.labels)
    batches = []
    for start in range(0, rows, batch_size):
        inputs = [tf.constant(np.asarray(t[start:start + batch_size], np.float32)) for t in arrays.tensors]
        batches.append(tf.cast(forward(_single(inputs)), tf.float32).numpy())
    return np.concatenate(batches)


def trunk_dataset(arrays: TrunkArrays, batch_size: int, seed: int | None = None) -> tf.data.Dataset:
    """Batches of ``(trunk tensors as float32, one-hot labels)`` read from the memory-mapped cache.

    ``seed=None``: every row in order (validation). Else one pass is one epoch for ``fit``: the
    e-th pass over the dataset is view ``e mod K`` of every image, shuffled with seed ``(seed, e)``
    (a resumed run counts its passes from 0 again)."""
    count, views = arrays.images, arrays.views
    if seed is None:
        rows = tf.data.Dataset.range(count).batch(batch_size)
    else:
        passes = itertools.count()

        def epoch_index():  # called once each time the dataset is iterated
            yield next(passes)

        def epoch_rows(epoch):
            order = tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64), seed=[seed, epoch])
            return tf.data.Dataset.from_tensor_slices(order + (epoch % views) * count).batch(batch_size)

        rows = tf.data.Dataset.from_generator(epoch_index, output_signature=tf.TensorSpec((), tf.int64))
        rows = rows.flat_map(epoch_rows).apply(tf.data.experimental.assert_cardinality(-(-count // batch_size)))

    def gather(batch_rows: np.ndarray) -> list[np.ndarray]:
        batch_rows = np.sort(batch_rows)  # sequential reads of the memory map; the order in a batch is immaterial
        return [np.asarray(t[batch_rows]) for t in arrays.tensors] + [arrays.labels[batch_rows]]

    dtypes = [tf.float16] * len(arrays.tensors) + [tf.float32]
    shapes = [t.shape[1:] for t in arrays.tensors] + [arrays.labels.shape[1:]]

    def load(batch_rows):
        parts = tf.numpy_function(gather, [batch_rows], dtypes, stateful=False)
        parts = [tf.ensure_shape(p, (None, *shape)) for p, shape in zip(parts, shapes)]
        inputs = tuple(tf.cast(p, tf.float32) for p in parts[:-1])
        return (inputs[0] if len(inputs) == 1 else inputs), parts[-1]

    # Under tf.distribute's multi-worker strategy each worker keeps its share of the batches: shard by
    # data (the default would try to shard by input file, and this dataset reads none).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return rows.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE).with_options(options)

