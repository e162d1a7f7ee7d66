"""The CLI end to end, as a user runs it: a small real training run and every user mistake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

TINY = {
    "seed": 0,
    "experiments": [
        {
            "name": "tiny_resnet18",
            "model": {"name": "resnet18", "options": {"stem": "cifar"}},
            "data": {
                "dataset": "cifar10",
                "image_size": 32,
                "train_per_class": 12,
                "test_per_class": 6,
                "val_fraction": 0.25,
                "batch_size": 30,
                "augment": {"crop_padding": 4, "flip": True},
            },
            "training": {"epochs": 2, "learning_rate": 0.02, "warmup_epochs": 1},
        }
    ],
}


def triptych(*args: str, mirror: Path | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if mirror is not None:
        env["TRIPTYCH_MIRROR"] = str(mirror)
    return subprocess.run(
        [sys.executable, "-m", "triptych", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


@pytest.fixture(scope="module")
def tiny_run(cifar_mirror, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    result = triptych("run", str(config), "--out", str(root / "out"), mirror=cifar_mirror)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, config, result


@pytest.mark.slow
def test_run_directory_contract(tiny_run):
    root, _, _ = tiny_run
    run = root / "out" / "tiny_resnet18"
    for name in ("config.yaml", "manifest.json", "history.csv", "model.keras", "predictions.csv", "metrics.json", "split.csv"):
        assert (run / name).is_file(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["weights"] == "random" and manifest["seed"] == 0
    assert {"keras", "numpy", "python"} <= set(manifest["versions"])
    assert manifest["data"]["fingerprint"]["test"] and manifest["peak_rss_mb"] > 0
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == [0, 1]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(history.columns)
    predictions = pd.read_csv(run / "predictions.csv")
    assert len(predictions) == 60
    classes = json.loads((run / "metrics.json").read_text())["class_names"]
    assert list(predictions.columns) == ["path", "y_true", "y_pred"] + [f"prob_{c}" for c in classes]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "resnet18" and metrics["params"] > 1_000_000 and metrics["train_seconds"] > 0
    assert set(metrics["per_class"]) == set(classes)
    assert sum(map(sum, metrics["confusion_matrix"])) == 60
    split = pd.read_csv(run / "split.csv")
    assert split["split"].value_counts().to_dict() == {"train": 90, "val": 30, "test": 60}
    assert not (root / "out" / "tiny_resnet18" / "checkpoints" / "backup").exists()
    assert (root / "out" / "report.html").is_file()


@pytest.mark.slow
def test_saved_model_loads_and_reproduces_predictions(tiny_run, cifar_mirror):
    import keras
    import numpy as np

    root, _, _ = tiny_run
    run = root / "out" / "tiny_resnet18"
    model = keras.saving.load_model(run / "model.keras")  # safe mode: no arbitrary code
    assert model.name == "resnet18"
    predictions = pd.read_csv(run / "predictions.csv")
    from triptych.data.images import decode_image
    from triptych.data.preprocessing import get_preprocessor
    import tensorflow as tf

    path = predictions["path"].iloc[0]
    image = tf.cast(decode_image(tf.io.read_file(path)), tf.float32)[None]
    probs = model.predict(get_preprocessor("torch")(image), verbose=0)[0]
    expected = predictions.filter(like="prob_").iloc[0].to_numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-4)


@pytest.mark.slow
def test_existing_output_is_refused_then_resume_skips_finished(tiny_run, cifar_mirror):
    root, config, _ = tiny_run
    refused = triptych("run", str(config), "--out", str(root / "out"), mirror=cifar_mirror)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].endswith("pass --resume to continue it or --overwrite to replace it")
    resumed = triptych("run", str(config), "--out", str(root / "out"), "--resume", mirror=cifar_mirror)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "already done, skipped" in resumed.stdout


def test_unknown_model_lists_valid_ones(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"experiments": [{"name": "x", "model": {"name": "resnet5"}}]}))
    result = triptych("run", str(config), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "unknown model 'resnet5'; valid models:" in result.stderr and "resnet50" in result.stderr
    assert not (tmp_path / "out").exists()


def test_no_dataset_and_no_network_says_where_it_looked(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(TINY))
    env_home = tmp_path / "home"
    result = subprocess.run(
        [sys.executable, "-m", "triptych", "run", str(config), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "TRIPTYCH_MIRROR": str(tmp_path / "empty"),
            "KERAS_HOME": str(env_home),  # no cached download
            "HTTPS_PROXY": "http://127.0.0.1:9",  # and no network, even on a machine that has one
            "HTTP_PROXY": "http://127.0.0.1:9",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        },
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "CIFAR-10 not found: looked in" in last and "TRIPTYCH_MIRROR" in last
    manifest = json.loads((tmp_path / "out" / "tiny_resnet18" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "CIFAR-10 not found" in manifest["reason"]


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["report", "--help"]])
def test_help_explains_itself(args):
    result = triptych(*args)
    assert result.returncode == 0
    assert "usage: triptych" in result.stdout
    if args[0] == "run":
        assert "--resume" in result.stdout and "TRIPTYCH_MIRROR" in result.stdout


def test_bad_config_is_one_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"experiments": [{"name": "x", "training": {"epochs": -2}}]}))
    result = triptych("run", str(config), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr  # one line
    assert "training.epochs" in result.stderr
