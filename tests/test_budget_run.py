"""Budgeted runs end to end: the decision recorded, kept by --resume after a SIGKILL, and a budget
too small for one epoch refused before training. Tiny: 16 px images, a dozen of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from killing import kill_after_first_epoch
from triptych.config import parse_config
from triptych.errors import InvalidArgumentError

SRC = Path(__file__).resolve().parent.parent / "src"


def tiny_config(folder: Path, name: str, **training) -> dict:
    return {
        "seed": 0,
        "experiments": [{
            "name": name,
            "model": {"name": "resnet18", "options": {"stem": "cifar"}},
            "data": {"dataset": "folder", "path": str(folder), "image_size": 16, "batch_size": 4,
                     "val_fraction": 0.25, "test_fraction": 0.25, "duplicates": "allow"},
            "training": {"learning_rate": 0.01, "tensorboard": False, **training},
        }],
    }


def triptych(*args: str) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "triptych", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.slow
def test_resume_keeps_the_epochs_chosen_for_the_budget_without_measuring_again(tmp_path):
    import yaml
    from conftest import write_image_folder

    folder = write_image_folder(tmp_path / "images", ["cats", "dogs"], 6, size=16)
    config = tmp_path / "c.yaml"
    # 3 epochs of a dozen 16 px images fit ten minutes anywhere: the run is still going when killed.
    config.write_text(yaml.safe_dump(tiny_config(folder, "budgeted", epochs=3, time_budget="10m")))
    out = tmp_path / "out"
    run = out / "budgeted"
    first = triptych("run", str(config), "--out", str(out), "--no-report")
    kill_after_first_epoch(first, run / "checkpoints" / "backup" / "train" / "training_metadata.json")
    decided = json.loads((run / "manifest.json").read_text())["budget"]
    assert decided["seconds"] == 600 and decided["chosen_epochs"] == {"train": 3}
    assert decided["train_img_s"]["train"] > 0 and decided["planned_seconds"] <= 600

    resumed = triptych("run", str(config), "--out", str(out), "--no-report", "--resume")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-3000:]
    assert "3 epochs chosen for a budget of 10m" in output and "as decided when the run started" in output
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "done"
    assert manifest["budget"] == decided  # the measured speeds too: nothing was measured again
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [0, 1, 2]


@pytest.mark.slow
def test_a_budget_too_small_for_one_epoch_is_refused_before_training(tmp_path):
    from conftest import write_image_folder

    from triptych.runner import RunOptions, run_config

    folder = write_image_folder(tmp_path / "images", ["cats", "dogs"], 6, size=16)
    config = parse_config(tiny_config(folder, "hurried", epochs=3, time_budget="1s"))
    with pytest.raises(InvalidArgumentError, match=r"^time_budget 1s is too small for one epoch of hurried \(measured "
                                                   r"~[\d.]+ s per epoch \+ [\d.]+ s fixed costs\); the minimum is "
                                                   r"about \d+ s$"):
        run_config(config, tmp_path / "out", RunOptions(isolate=False, report=False))
    run = tmp_path / "out" / "hurried"
    assert not (run / "history.csv").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "too small" in manifest["reason"] and manifest["budget"] is None


def test_the_api_refuses_what_the_cli_refuses_before_anything_runs(tmp_path):
    from triptych.runner import RunOptions, run_config

    config = parse_config(tiny_config(tmp_path, "never", epochs=1))
    with pytest.raises(InvalidArgumentError, match="budget '5 minutes' is not a duration"):
        run_config(config, tmp_path / "out", RunOptions(budget="5 minutes", isolate=False))
    assert not (tmp_path / "out").exists()


def test_a_configs_budget_gives_each_experiment_a_share_and_a_resumed_one_its_first_share(tmp_path):
    from triptych.budget import BudgetClock
    from triptych.rundir import BudgetInfo, RunDir, RunRecord
    from triptych.runner import with_budget_share

    exp = parse_config(tiny_config(tmp_path, "shared", epochs=5)).experiments[0]
    assert with_budget_share(exp, tmp_path, None, [exp] * 3) is exp
    assert with_budget_share(exp, tmp_path, BudgetClock(600), [exp] * 3).training.time_budget == pytest.approx(200, abs=1)
    decided = BudgetInfo(seconds=123.4, chosen_epochs={"train": 2}, configured_epochs={"train": 5},
                         seconds_per_epoch={"train": 1.0}, train_img_s={"train": 10.0}, predict_img_s=30.0,
                         fixed_seconds=50.0, planned_seconds=52.0)
    RunDir(tmp_path / "shared").root.mkdir()
    RunDir(tmp_path / "shared").write_record(RunRecord(status="failed", experiment="shared", model="resnet18", seed=0,
                                                      budget=decided))
    # Its config.yaml must not change on --resume: it keeps the share it was given.
    assert with_budget_share(exp, tmp_path, BudgetClock(600), [exp] * 3).training.time_budget == 123.4
