"""Two-phase fine-tuning through the runner: one continuous history, the feature cache, resume.

The phase mechanics do not depend on the backbone's size, so these tests swap DenseNet-121
for a tiny backbone with DenseNet's layer names (models/test_pretrained.py covers the real one).
"""

import json
import os

import keras
import numpy as np
import pandas as pd
import pytest

from triptych.config import AugmentConfig, parse_config
from triptych.runner import run_experiment
from triptych.training import phases


def tiny_densenet(include_top=False, weights=None, input_shape=(32, 32, 3)):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, strides=2, name="conv1_conv")(inputs)
    x = keras.layers.BatchNormalization(name="conv5_block16_1_bn")(x)
    x = keras.layers.Conv2D(16, 3, name="conv5_block16_2_conv", activation="relu")(x)
    return keras.Model(inputs, x, name="densenet121")


@pytest.fixture(autouse=True)
def tiny_backbone(monkeypatch):
    from triptych.models import pretrained

    monkeypatch.setitem(pretrained.BACKBONES, "densenet121", tiny_densenet)


@pytest.fixture
def weights_file(tmp_path):
    path = tmp_path / "dn.weights.h5"
    tiny_densenet().save_weights(str(path))
    return path


def experiment(folder, weights, **training):
    raw = {
        "experiments": [
            {
                "name": "dn",
                "model": {"name": "densenet121", "weights": str(weights), "options": {"dropout": 0.1}},
                "data": {
                    "dataset": "folder",
                    "path": str(folder),
                    "image_size": 32,
                    "batch_size": 16,
                    "val_fraction": 0.2,
                    "test_fraction": 0.25,
                    "duplicates": "allow",
                },
                "training": {
                    "epochs": 2,
                    "optimizer": "adam",
                    "learning_rate": 1e-2,
                    "weight_decay": 0.0,
                    "fine_tune": {"epochs": 1, "unfreeze_blocks": ["conv5_block16"]},
                    **training,
                },
            }
        ]
    }
    return parse_config(raw).experiments[0]


def history(run):
    return pd.read_csv(run.history)


def test_two_phases_one_history_and_cache_reuse(tmp_path, image_folder, weights_file, monkeypatch):
    monkeypatch.setenv("TRIPTYCH_CACHE", str(tmp_path / "cache"))
    exp = experiment(image_folder, weights_file)
    first = run_experiment(exp, tmp_path / "a", seed=0, log=lambda m: None)
    frame = history(first)
    assert frame["epoch"].tolist() == [0, 1, 2]
    assert frame["phase"].tolist() == ["head", "head", "fine-tune"]
    record = first.read_record()
    assert record.status == "done" and record.phases_done == ["head", "fine-tune"]
    assert record.feature_cache.hit is False and record.feature_cache.train_features == [36, 16]
    assert record.weights.startswith("local file dn.weights.h5")
    assert record.best_epoch in (0, 1, 2) and record.train_seconds >= record.feature_cache.seconds
    trunk = record.trunk_cache  # phase 2 on the tiny backbone's conv1 output, one clean view
    # ... which the head phase built (its features are the top's pooled output on that cache): phase 2 reuses it.
    assert trunk.hit is True and trunk.tensors == ["conv1_conv"] and trunk.views == 1
    assert trunk.train_shapes == [[36, 15, 15, 8]] and trunk.dtype == "float16"
    second = run_experiment(exp, tmp_path / "b", seed=0, log=lambda m: None)
    assert second.read_record().feature_cache.hit is True and second.read_record().trunk_cache.hit is True
    # Same features, same seed: the head phase learns the same thing from the cache.
    np.testing.assert_allclose(history(second)["loss"][:2], frame["loss"][:2], rtol=1e-4)


def test_an_edited_training_image_rebuilds_the_caches(tmp_path, image_folder, weights_file, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("TRIPTYCH_CACHE", str(tmp_path / "cache"))
    for path in image_folder.rglob("*.png"):  # uncompressed: a file's size is fixed by its pixel count
        Image.open(path).save(path, compress_level=0)
    exp = experiment(image_folder, weights_file)
    first = run_experiment(exp, tmp_path / "a", seed=0, log=lambda m: None)
    edited = pd.read_csv(first.split).query("split == 'train'")["id"].iloc[0]
    size = os.path.getsize(edited)
    Image.fromarray(255 - np.asarray(Image.open(edited))).save(edited, compress_level=0)
    assert os.path.getsize(edited) == size  # same name, same size, other pixels
    second = run_experiment(exp, tmp_path / "b", seed=0, log=lambda m: None)
    before, after = first.read_record(), second.read_record()
    assert before.data.fingerprint.train != after.data.fingerprint.train
    # The head phase rebuilt the trunk cache (its features come from it), so phase 2 found it rebuilt.
    assert after.feature_cache.hit is False


def test_augmented_trunk_views_and_the_saved_model_is_the_whole_model(tmp_path, image_folder, weights_file, monkeypatch):
    monkeypatch.setenv("TRIPTYCH_CACHE", str(tmp_path / "cache"))
    exp = experiment(image_folder, weights_file)
    exp = exp.model_copy(update={"data": exp.data.model_copy(update={"augment": AugmentConfig(flip=True)})})
    run = run_experiment(exp, tmp_path / "out", seed=0, log=lambda m: None)
    trunk = run.read_record().trunk_cache
    assert trunk.views == 2 and trunk.train_shapes == [[72, 15, 15, 8]]  # 2 augmented views of 36 images
    saved = keras.saving.load_model(run.model)  # plain Keras, the whole model: image in, probabilities out
    assert saved.input_shape == (None, 32, 32, 3)
    assert saved.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0).shape == (2, 3)
    # The whole model, trunk included (the unit tests show phase 2 on the cache trains its weights).
    assert {"conv1_conv", "conv5_block16_2_conv"} <= {layer.name for layer in saved.get_layer("base").layers}
    assert history(run)["phase"].tolist() == ["head", "head", "fine-tune"]


def test_resume_after_a_kill_between_phases_loses_and_repeats_nothing(tmp_path, image_folder, weights_file, monkeypatch):
    monkeypatch.setenv("TRIPTYCH_CACHE", str(tmp_path / "cache"))
    exp = experiment(image_folder, weights_file)
    real_fine_tune = phases._fine_tune

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(phases, "_fine_tune", killed)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, tmp_path / "out", seed=0, log=lambda m: None)
    run_dir = tmp_path / "out" / "dn"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["reason"] == "interrupted"
    assert manifest["phases_done"] == ["head"]
    monkeypatch.setattr(phases, "_fine_tune", real_fine_tune)
    run = run_experiment(exp, tmp_path / "out", seed=0, resume=True, log=lambda m: None)
    assert history(run)["epoch"].tolist() == [0, 1, 2]
    assert history(run)["phase"].tolist() == ["head", "head", "fine-tune"]
    record = run.read_record()
    assert record.status == "done" and record.phases_done == ["head", "fine-tune"]
    assert record.feature_cache is not None  # recorded by the first session, kept by the second


def test_random_weights_train_end_to_end_without_freezing(tmp_path, image_folder):
    exp = experiment(image_folder, "random")
    run = run_experiment(exp, tmp_path / "out", seed=0, log=lambda m: None)
    assert history(run)["phase"].tolist() == ["train", "train"]
    record = run.read_record()
    assert record.weights == "random" and record.expected_pretrained is True
    assert record.frozen_base_phase is False and record.phases_done == ["train"]


def test_plan_phases_follows_freeze_base_and_fine_tune(image_folder):
    tuned = experiment(image_folder, "random").training
    assert phases.plan_phases(tuned, frozen_base=True) == ["head", "fine-tune"]
    assert phases.plan_phases(tuned, frozen_base=False) == ["train"]
    assert phases.plan_phases(tuned.model_copy(update={"fine_tune": None}), frozen_base=True) == ["head"]


def test_test_predictions_on_the_trunk_cache_are_the_whole_models(tmp_path, image_folder, weights_file, monkeypatch):
    """Phase 2 on the trunk cache: the test images go through the same cache (built on the first run,
    read on the next), and their probabilities are model.keras's on the image files, up to float16."""
    from triptych.inference.prediction import predict

    monkeypatch.setenv("TRIPTYCH_CACHE", str(tmp_path / "cache"))
    exp = experiment(image_folder, weights_file)
    first = run_experiment(exp, tmp_path / "a", seed=0, log=lambda m: None)
    assert first.read_record().predicted_from == "trunk cache"
    assert len(list((tmp_path / "cache" / "trunk").glob("densenet121-*"))) == 3  # train, val and test
    table = pd.read_csv(first.predictions)
    classes = first.read_record().class_names
    cached = table[[f"prob_{name}" for name in classes]].to_numpy()
    results = predict(first.root, table["path"].tolist(), top_k=len(classes), progress=False)
    whole = np.array([[{p["label"]: p["probability"] for p in r["top_k"]}[name] for name in classes] for r in results])
    assert np.abs(cached - whole).max() <= 2e-3
    assert (cached.argmax(1) == whole.argmax(1)).all()
    second = run_experiment(exp, tmp_path / "b", seed=0, log=lambda m: None)
    assert second.read_record().predicted_from == "trunk cache"
    assert len(list((tmp_path / "cache" / "trunk").glob("densenet121-*"))) == 3  # read, not built again
    # Without the cache (fine-tune on images) the test images go through the whole model.
    off = exp.model_copy(update={"training": exp.training.model_copy(
        update={"fine_tune": exp.training.fine_tune.model_copy(update={"trunk_cache": False})})})
    assert run_experiment(off, tmp_path / "c", seed=0, log=lambda m: None).read_record().predicted_from == "images"
