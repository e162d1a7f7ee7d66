"""The trunk cache: trunk -> top equals the whole model, the cache's folder is complete or absent,
a mismatching cache is rebuilt, the training dataset walks the views, one row per image under
a distribution strategy."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from triptych.models import build
from triptych.models.pretrained import unfreeze
from triptych.training.trunk_cache import (
    TrunkArrays,
    TrunkKey,
    cached_trunk,
    pooled_features,
    split_model,
    trunk_dataset,
)

# The split points the benchmarks use: Xception's last block; DenseNet-121's last two dense layers.
SPLITS = [("xception", 71, ["block14"]), ("densenet121", 32, ["conv5_block15", "conv5_block16"])]


def _peaky_head(model: keras.Model) -> None:
    """Random weights give near-uniform probabilities; a large classifier makes them depend
    strongly on the features, so a wrong trunk/top cut cannot hide in the softmax."""
    kernel, bias = model.get_layer("predictions").get_weights()
    rng = np.random.default_rng(0)
    model.get_layer("predictions").set_weights([rng.normal(0, 5, kernel.shape).astype("float32"), bias])


@pytest.mark.parametrize(("name", "size", "blocks"), SPLITS)
def test_trunk_then_top_equals_the_whole_model_before_and_after_a_training_step(name, size, blocks):
    model = build(name, 3, (size, size, 3), weights=None)
    _peaky_head(model)
    unfreeze(model, blocks)
    split = split_model(model, blocks)
    images = np.random.default_rng(1).uniform(-1, 1, (4, size, size, 3)).astype("float32")
    labels = keras.utils.to_categorical([0, 1, 2, 0], 3)

    def max_diff() -> float:
        whole = model(images, training=False).numpy()
        return float(np.abs(whole - split.top(split.trunk(images, training=False), training=False).numpy()).max())

    assert max_diff() <= 1e-4
    assert not split.trunk.trainable_weights  # below the unfrozen blocks everything is frozen
    full_variables = {id(v) for v in model.trainable_weights}
    assert split.top.trainable_weights and all(id(v) in full_variables for v in split.top.trainable_weights)
    before = model.get_layer("predictions").get_weights()[0].copy()
    split.top.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy")
    split.top.train_on_batch(split.trunk(images, training=False), labels)
    # Training the top moved the full model's own weights, and the two still agree.
    assert not np.allclose(model.get_layer("predictions").get_weights()[0], before)
    assert max_diff() <= 1e-4


def test_pooled_features_on_the_cache_equal_the_backbones_features_of_the_images(tmp_path):
    """The head phase's features read off the trunk cache are the whole backbone's pooled features
    (to float16 storage's precision), row for row."""
    model = build("xception", 3, (71, 71, 3), weights=None)
    split = split_model(model, ["block14"])
    images = np.random.default_rng(2).uniform(-1, 1, (5, 71, 71, 3)).astype("float32")
    labels = keras.utils.to_categorical([0, 1, 2, 0, 1], 3)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
    key = _key(model="xception", image_size=71, tensors=tuple(split.tensors))
    arrays, _ = cached_trunk(key, split.trunk, [dataset], 5, tmp_path)
    features = pooled_features(split, arrays, batch_size=2)
    whole = keras.Model(model.input, model.get_layer("avg_pool").output)(images, training=False).numpy()
    assert features.shape == whole.shape == (5, model.get_layer("predictions").kernel.shape[0])
    np.testing.assert_allclose(features, whole, rtol=0.02, atol=0.02 * float(np.abs(whole).max()))
    assert not np.allclose(features[0], features[1])  # rows are the images' own, in order


def _tiny_trunk() -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, keras.layers.Conv2D(4, 3, name="conv")(inputs))


def _images(count: int, seed: int = 0, batch: int = 4) -> tf.data.Dataset:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (count, 8, 8, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 3, count), 3)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def _key(**changes) -> TrunkKey:
    fields = dict(model="tiny", weights="random", trunk_weights="w0", image_size=8, preprocessing="tf",
                  tensors=("conv",), data_fingerprint="train:abc", views=1, augment="none", seed=0,
                  precision="fp32")
    return TrunkKey(**{**fields, **changes})


def test_cache_is_reused_and_any_key_change_rebuilds(tmp_path):
    trunk = _tiny_trunk()
    arrays, hit = cached_trunk(_key(), trunk, [_images(10)], 10, tmp_path)
    assert not hit and arrays.tensors[0].shape == (10, 6, 6, 4) and arrays.tensors[0].dtype == np.float16
    expected = trunk.predict(_images(10), verbose=0)
    np.testing.assert_allclose(np.asarray(arrays.tensors[0], np.float32), expected, rtol=1e-3, atol=1e-3)
    assert cached_trunk(_key(), trunk, [_images(10)], 10, tmp_path)[1] is True
    assert cached_trunk(_key(data_fingerprint="train:abd"), trunk, [_images(10, seed=1)], 10, tmp_path)[1] is False


def test_a_damaged_cache_folder_is_rebuilt_not_read(tmp_path):
    trunk = _tiny_trunk()
    cached_trunk(_key(), trunk, [_images(10)], 10, tmp_path)
    (folder,) = (tmp_path / "trunk").iterdir()
    (folder / "t0.npy").write_bytes(b"not an array")
    arrays, hit = cached_trunk(_key(), trunk, [_images(10)], 10, tmp_path)
    assert not hit and arrays.tensors[0].shape == (10, 6, 6, 4)


def test_a_killed_build_leaves_nothing_that_is_read_later(tmp_path):
    trunk = _tiny_trunk()

    def interrupted():
        yield from _images(8).take(1)
        raise KeyboardInterrupt  # the build stops after its first batch

    with pytest.raises(KeyboardInterrupt):
        cached_trunk(_key(), trunk, [interrupted()], 8, tmp_path)
    assert not list((tmp_path / "trunk").iterdir())
    # What a SIGKILL leaves: a partial folder, complete-looking, of a process that is gone.
    cached_trunk(_key(), trunk, [_images(8)], 8, tmp_path / "other")
    (done,) = (tmp_path / "other" / "trunk").iterdir()
    final = tmp_path / "trunk" / done.name
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    partial = final.with_name(f"{final.name}.partial-{os.uname().nodename}-{dead.stdout.strip()}")
    done.rename(partial)
    arrays, hit = cached_trunk(_key(), trunk, [_images(8)], 8, tmp_path)
    assert not hit and not partial.exists() and final.is_dir()


def test_training_dataset_gives_every_image_once_an_epoch_cycling_through_the_views():
    images, views = 5, 2
    rows = np.arange(images * views, dtype=np.float16)
    arrays = TrunkArrays([rows.reshape(-1, 1)], np.eye(images * views, dtype=np.float32), views, images)
    dataset = trunk_dataset(arrays, 2, seed=0)
    assert dataset.cardinality().numpy() == 3  # ceil(5 / 2) batches: fit's epoch is one pass
    epochs = [list(dataset) for _ in range(3)]  # fit iterates the dataset once an epoch
    for epoch, batches in enumerate(epochs):
        seen = np.concatenate([x.numpy()[:, 0] for x, _ in batches]).astype(int)
        view = epoch % views
        assert sorted(seen) == list(range(view * images, (view + 1) * images))
        for x, y in batches:  # labels travel with their rows
            assert (np.argmax(y.numpy(), axis=1) == x.numpy()[:, 0].astype(int)).all()
    assert [x.numpy()[0, 0] for x, _ in epochs[0]] != [x.numpy()[0, 0] for x, _ in epochs[2]]  # reshuffled
    validation = np.concatenate([x.numpy()[:, 0] for x, _ in trunk_dataset(arrays, 2)])
    assert validation.astype(int).tolist() == list(range(images))  # in order, once (view 0)


STRATEGY_SCRIPT = textwrap.dedent(
    """
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np, sys
    from pathlib import Path
    from triptych.training.feature_cache import extract
    from triptych.training.trunk_cache import TrunkKey, cached_trunk
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    x = np.random.default_rng(0).uniform(0, 1, (12, 8, 8, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(12) % 3, 3)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(6)
    with strategy.scope():
        inputs = keras.Input((8, 8, 3))
        features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
        model = keras.Model(inputs, features)
        features, labels = extract(model, [data])
        key = TrunkKey("tiny", "random", "w", 8, "tf", ("conv",), "fp", 1, "none", 0, "fp32")
        arrays, _ = cached_trunk(key, model, [data], 12, Path(sys.argv[1]))
    print(features.shape[0], labels.shape[0], arrays.tensors[0].shape[0])
    """
)


def test_extraction_gives_one_row_per_image_under_a_two_replica_strategy(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", STRATEGY_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-3:] == ["12", "12", "12"]
