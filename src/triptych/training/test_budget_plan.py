"""The warm-up behind training.time_budget: it leaves the model as it found it, its decision is
what the phases train, and the schedule follows the chosen epochs.

A tiny backbone with DenseNet's layer names stands in for DenseNet-121 (as in test_phases.py).
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from triptych.config import parse_config
from triptych.models import build
from triptych.runner import run_experiment
from triptych.training.budget_plan import plan_epochs, with_chosen_epochs
from triptych.training.phases import FINE_TUNE, HEAD, PhaseData
from triptych.training.test_phases import tiny_densenet


@pytest.fixture(autouse=True)
def tiny_backbone(monkeypatch):
    from triptych.models import pretrained

    monkeypatch.setitem(pretrained.BACKBONES, "densenet121", tiny_densenet)


def experiment(folder=None, weights=None, **training):
    data = {"dataset": "folder", "path": str(folder), "image_size": 32, "batch_size": 8, "val_fraction": 0.2,
            "test_fraction": 0.25, "duplicates": "allow"} if folder else {"image_size": 32, "batch_size": 8}
    return parse_config({"experiments": [{
        "name": "dn",
        "model": {"name": "densenet121", "weights": None if weights is None else str(weights)},
        "data": data,
        "training": {"epochs": 4, "optimizer": "adam", "learning_rate": 1e-2, "weight_decay": 0.0,
                     "tensorboard": False, "fine_tune": {"epochs": 3, "unfreeze_blocks": ["conv5_block16"]},
                     **training},
    }]}).experiments[0]


def random_data(num_train=20, num_val=6, batch=8) -> PhaseData:
    rng = np.random.default_rng(0)

    def make(split, training, seed=0):
        n = num_train if split == "train" else num_val
        x = rng.random((n, 32, 32, 3), dtype=np.float32)
        y = keras.utils.to_categorical(np.arange(n) % 3, 3).astype(np.float32)
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)

    return PhaseData(make=make, num_train=num_train, num_val=num_val, batch_size=batch, fingerprint="f",
                     preprocessing="torch", augment="none", image_size=32, seed=0)


def test_the_warm_up_leaves_weights_and_frozen_layers_as_they_were():
    model = build("densenet121", 3, (32, 32, 3), weights=None)
    model.get_layer("base").trainable = False  # as before the head phase
    before = [w.copy() for w in model.get_weights()]
    flags = [layer.trainable for layer in model.get_layer("base").layers]
    decision = plan_epochs(experiment(), model, random_data(), [HEAD, FINE_TUNE], budget_s=3600, spent_s=5.0,
                           num_val=6, num_test=6)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    assert not model.get_layer("base").trainable
    assert [layer.trainable for layer in model.get_layer("base").layers] == flags
    assert decision.chosen_epochs == {HEAD: 4, FINE_TUNE: 3}  # an hour: the configured epochs fit
    assert decision.configured_epochs == {HEAD: 4, FINE_TUNE: 3}
    assert decision.fixed_seconds >= 5.0 and decision.planned_seconds <= 3600 * 0.95
    assert set(decision.train_img_s) == {HEAD, FINE_TUNE} and decision.predict_img_s > 0


def test_the_warm_up_leaves_dropout_and_the_random_states_as_they_were():
    """Restored, not seeded again: training then starts as it would have without the warm-up."""
    import random

    from triptych.training.phases import TRAIN

    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Dropout(0.5)(pooled)))
    before = [variable.numpy().copy() for variable in model.variables]
    python_random, numpy_random = random.getstate(), np.random.get_state()[1].copy()
    plan_epochs(experiment(fine_tune=None), model, random_data(), [TRAIN], budget_s=3600, spent_s=0.0,
                num_val=6, num_test=6)
    seed_states = [i for i, variable in enumerate(model.variables) if "seed_generator" in variable.path]
    assert seed_states  # the dropout's random state is one of the variables compared
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.variables))
    assert random.getstate() == python_random
    assert np.array_equal(np.random.get_state()[1], numpy_random)


def test_the_schedule_follows_the_chosen_epochs():
    exp = experiment(epochs=20, warmup_epochs=2, schedule="step", step_epochs=[10, 15])
    decision = plan_stub({"head": 5, FINE_TUNE: 2})
    budgeted = with_chosen_epochs(exp, decision)
    assert budgeted.training.epochs == 5 and budgeted.training.fine_tune.epochs == 2
    assert budgeted.training.warmup_epochs == 0.5 and budgeted.training.step_epochs == [2, 4]
    assert with_chosen_epochs(exp, None) is exp


def plan_stub(chosen):
    from triptych.rundir import BudgetInfo

    return BudgetInfo(seconds=60, chosen_epochs=chosen, configured_epochs=chosen, seconds_per_epoch=dict.fromkeys(chosen, 1.0),
                      train_img_s=dict.fromkeys(chosen, 1.0), predict_img_s=1.0, fixed_seconds=1.0, planned_seconds=10.0)


def test_a_budgeted_two_phase_run_trains_the_epochs_it_chose(tmp_path):
    from conftest import write_image_folder

    folder = write_image_folder(tmp_path / "images", ["a", "b", "c"], 8)
    weights = tmp_path / "dn.weights.h5"
    tiny_densenet().save_weights(str(weights))
    run = run_experiment(experiment(folder, weights, time_budget="1h"), tmp_path / "out", seed=0, log=lambda _: None)
    decision = json.loads(run.manifest.read_text())["budget"]
    history = pd.read_csv(run.history)
    assert history["phase"].value_counts().to_dict() == decision["chosen_epochs"] == {HEAD: 4, FINE_TUNE: 3}


@pytest.mark.parametrize(("cache_views", "builds_trunk"), [(1, False), (2, True)])
def test_a_trunk_cached_fine_tune_is_costed_on_the_top_and_pays_the_trunk_only_if_the_head_did_not(
    monkeypatch, cache_views, builds_trunk
):
    from triptych.training import budget_plan

    timed = []

    def fake_timing(model, batches, cfg, steps, limit):
        timed.append(model.name)
        return budget_plan.StepTiming(seconds=0.5, trace_seconds=2.0, images_per_second=16.0)

    monkeypatch.setattr(budget_plan, "_time_training", fake_timing)
    # the head on one clean view reads phase 2's trunk cache (one clean view); on two views it builds its own
    exp = experiment(cache_views=cache_views)
    model = build("densenet121", 3, (32, 32, 3), weights=None)
    model.get_layer("base").trainable = False
    inference = budget_plan.Inference(budget_plan.StepTiming(0.1, 1.0, 100.0), save_seconds=0.25)
    cost, _ = budget_plan._phase_cost(FINE_TUNE, exp, model, random_data(), inference, num_val=6, limit=1.0)
    assert timed == [f"{model.name}_top"]  # the unfrozen top alone, on stand-in trunk activations
    assert cost.epoch_seconds == pytest.approx((3 + 1) * 0.5 + 2 * 0.25)  # 3 train + 1 val steps, 2 saves
    build_s = (20 + 6) / 100.0 if builds_trunk else 0.0  # one clean view of 20 train + 6 val images
    assert cost.fixed_seconds == pytest.approx(build_s + (2 + 1) * 2.0)  # 20 % 8 != 0: a second train trace
    assert cost.max_epochs == 3


def test_training_after_the_warm_up_keeps_the_step_it_traced(tmp_path):
    """The warm-up times model.fit on the phase's own data and puts the optimizer back as compiled:
    the run's fit then trains from step 0 without tracing its training step again."""
    from triptych.training.phases import TRAIN
    from triptych.training.test_trainer import _CountsTraces
    from triptych.training.trainer import RunFiles, fit

    counter = _CountsTraces()
    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(counter(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(pooled))
    exp, data = experiment(fine_tune=None, schedule="cosine", warmup_epochs=1), random_data()
    decision = plan_epochs(exp, model, data, [TRAIN], budget_s=3600, spent_s=0.0, num_val=6, num_test=6)
    traced = counter.traces
    assert traced >= 1 and int(model.optimizer.iterations.numpy()) == 0
    files = RunFiles(tmp_path / "h.csv", tmp_path / "best.weights.h5", tmp_path / "backup", tmp_path / "tb")
    fit(model, data.make("train", True), data.make("val", False), with_chosen_epochs(exp, decision).training, files,
        steps_per_epoch=3, verbose=0)
    assert counter.traces == traced
    assert int(model.optimizer.iterations.numpy()) == 3 * decision.chosen_epochs[TRAIN]
