"""A real SIGKILL in the middle of training, then --resume: nothing lost, repeated or half-written.

benchmarks/faults.py does the same at random moments, many times, and across two-phase
fine-tuning; this is the one fast case for the test suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from killing import kill_after_first_epoch
import yaml

SRC = Path(__file__).resolve().parent.parent / "src"


def environment() -> dict[str, str]:
    return {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    }


def triptych(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "triptych", *args], capture_output=True, text=True, env=environment(), timeout=600
    )


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_loses_and_repeats_nothing(tmp_path):
    from conftest import write_image_folder

    folder = write_image_folder(tmp_path / "images", ["cats", "dogs"], 6)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "seed": 0,
        "experiments": [{
            "name": "killed",
            "model": {"name": "resnet18", "options": {"stem": "cifar"}},
            "data": {"dataset": "folder", "path": str(folder), "image_size": 32, "batch_size": 4,
                     "val_fraction": 0.25, "test_fraction": 0.25, "duplicates": "allow"},
            "training": {"epochs": 3, "learning_rate": 0.01},
        }],
    }))
    out = tmp_path / "out"
    run = out / "killed"
    backup = run / "checkpoints" / "backup" / "train" / "training_metadata.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "triptych", "run", str(config), "--out", str(out), "--no-report"],
        env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    kill_after_first_epoch(process, backup)  # epoch 0 is backed up, epoch 1 is in flight
    assert process.returncode == -signal.SIGKILL

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "running"  # a SIGKILL leaves no chance to say more; never "done"
    assert not (run / "metrics.json").exists()
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() in ([0], [0, 1])
    # What a kill in the middle of an atomic write leaves behind: a temporary file, never a torn output.
    stale = run / ".history.csv.k1ll3d0x.csv"
    stale.write_text("epoch,loss\n0,")

    report = triptych("report", str(out))
    assert report.returncode == 0, report.stderr[-2000:]
    assert json.loads((out / "comparison.json").read_text())["rows"] == []  # not read as finished

    resumed = triptych("run", str(config), "--out", str(out), "--resume", "--no-report")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2]  # no epoch missing or repeated
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["phases_done"] == ["train"] and manifest["peak_rss_mb"] > 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert not stale.exists() and not (run / "checkpoints" / "backup").exists()
    assert not [p for p in run.rglob(".*") if p.is_file()]
