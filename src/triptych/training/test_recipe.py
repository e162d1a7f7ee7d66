"""The modern-recipe keys through the runner: recorded in the run record, and reaching training and prediction."""

from __future__ import annotations

import json

import keras
import pytest

from triptych.config import parse_config
from triptych.runner import run_experiment


def tiny_densenet(include_top=False, weights=None, input_shape=(32, 32, 3)):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, strides=2, name="conv1_conv")(inputs)
    return keras.Model(inputs, keras.layers.Conv2D(16, 3, name="conv5_block16_2_conv")(x), name="densenet121")


def test_recipe_is_recorded_and_reaches_training_and_prediction(tmp_path, image_folder, monkeypatch):
    from triptych import runner
    from triptych.models import pretrained

    monkeypatch.setitem(pretrained.BACKBONES, "densenet121", tiny_densenet)
    modes = []
    real = runner.predict_with_tta
    monkeypatch.setattr(runner, "predict_with_tta", lambda predict, ds, tta: modes.append(tta) or real(predict, ds, tta))
    raw = {"experiments": [{
        "name": "recipe",
        "model": {"name": "densenet121", "weights": None},
        "data": {"dataset": "folder", "path": str(image_folder), "image_size": 32, "batch_size": 16,
                 "duplicates": "allow", "tta": "flip",
                 "augment": {"flip": True, "rand_augment": {"num_ops": 1, "magnitude": 0.3}, "zoom": 0.1,
                             "erasing": 0.25, "mixup": 0.2}},
        "training": {"epochs": 1, "optimizer": "adam", "learning_rate": 1e-3, "weight_decay": 0.0,
                     "ema": True, "ema_momentum": 0.9},
    }]}
    exp = parse_config(raw).experiments[0]
    run = run_experiment(exp, tmp_path / "out", seed=0, log=lambda m: None)
    recipe = run.read_record().recipe
    assert recipe.augment == "Augment(crop_padding=0, flip=True, rand_augment=(1, 0.3), zoom=0.1, erasing=0.25, mixup=0.2)"
    assert recipe.ema_momentum == 0.9 and recipe.class_weights is None and recipe.tta == "flip"
    assert modes == ["flip"]
    metrics = json.loads(run.metrics.read_text())
    assert 0.0 <= metrics["balanced_accuracy"] <= 1.0


def test_balanced_class_weights_are_recorded_by_class_name(tmp_path, image_folder):
    from triptych.data.sources import load_folder
    from triptych.data.splits import make_splits
    from triptych.runner import recipe_info

    for extra in sorted((image_folder / "owls").iterdir())[8:]:
        extra.unlink()  # 20 cats, 20 dogs, 8 owls
    raw = {"experiments": [{"name": "w", "data": {"dataset": "folder", "path": str(image_folder)},
                            "training": {"class_weight": "balanced"}}]}
    exp = parse_config(raw).experiments[0]
    splits = make_splits(load_folder(image_folder), seed=0, val_fraction=0.1, test_fraction=0.2)
    train = splits.train.labels
    recorded = recipe_info(exp, splits, "Augment(crop_padding=0, flip=False)").class_weights
    expected = {name: len(train) / (3 * int((train == i).sum())) for i, name in enumerate(splits.class_names)}
    assert recorded == expected
    assert recorded["owls"] > 2 * recorded["cats"]  # the rare class weighs more


@pytest.mark.parametrize("weights", ["random", "pretrained"])  # one train phase; head (on cached features) + fine-tune
def test_class_weights_and_ema_reach_every_phase(tmp_path, image_folder, monkeypatch, weights):
    from triptych.models import pretrained
    from triptych.training import phases

    monkeypatch.setitem(pretrained.BACKBONES, "densenet121", tiny_densenet)
    monkeypatch.setenv("TRIPTYCH_CACHE", str(tmp_path / "cache"))
    calls = []
    real_fit = phases.fit
    monkeypatch.setattr(phases, "fit", lambda *a, **k: calls.append((a[3], k["class_weight"])) or real_fit(*a, **k))
    path = tmp_path / "dn.weights.h5"
    tiny_densenet().save_weights(str(path))
    raw = {"experiments": [{
        "name": "w",
        "model": {"name": "densenet121", "weights": None if weights == "random" else str(path)},
        "data": {"dataset": "folder", "path": str(image_folder), "image_size": 32, "batch_size": 16, "duplicates": "allow"},
        "training": {"epochs": 1, "optimizer": "adam", "learning_rate": 1e-3, "weight_decay": 0.0, "ema": True,
                     "class_weight": "balanced", "fine_tune": {"epochs": 1, "unfreeze_blocks": ["conv5_block16"]}},
    }]}
    exp = parse_config(raw).experiments[0]
    run = run_experiment(exp, tmp_path / "out", seed=0, log=lambda m: None)
    recorded = run.read_record().recipe.class_weights
    assert len(calls) == (1 if weights == "random" else 2)
    for cfg, class_weight in calls:
        assert cfg.ema is True
        assert class_weight is not None and sorted(class_weight.values()) == sorted(recorded.values())
