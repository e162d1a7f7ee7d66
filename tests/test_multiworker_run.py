"""``triptych run`` on 2 localhost workers (TF_CONFIG), end to end, as the README's recipe starts it.

Small: 60 CIFAR-10 images at 16-32 px, 1-3 epochs; a few minutes on 2 cores (the workers and the
single-process reference run side by side). Tolerances: tests/multiworker_run_check.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import pandas as pd
import pytest
from multiworker_harness import _wait, free_ports
from multiworker_run_check import (
    FEATURE_CACHE,
    RUN_FILES,
    compare,
    run,
    small_config,
    start_run,
    write_config,
)

from triptych.config import TrainingConfig
from triptych.training.backup import METADATA
from triptych.training.schedules import make_schedule
from triptych.training.trainer import steps_for

pytestmark = pytest.mark.slow
BACKUP = "checkpoints/backup/train"  # the scratch model's backup (one training phase)


@pytest.fixture(autouse=True)
def _mirror(cifar_mirror, monkeypatch):
    monkeypatch.setenv("TRIPTYCH_MIRROR", str(cifar_mirror))  # the workers inherit it


def test_two_workers_run_a_config_like_one_process(tmp_path):
    """A from-scratch ResNet-18 and a two-phase MobileNet fine-tune on 2 workers vs one process.

    The chief's run directories are complete and its report written; both workers predict the same;
    the fine-tune (BatchNorm frozen; a global batch of 7, split 4 + 3) matches the single run to
    PROB_ATOL / METRIC_ATOL; the
    from-scratch ResNet, whose workers normalise with their own half-batch statistics, is
    checked for the same test images only.
    """
    config = write_config(tmp_path / "small.yaml", small_config())
    _wait(start_run(config, tmp_path / "out", 2) + start_run(config, tmp_path / "single", 1), timeout=900)
    result = compare(tmp_path / "out", tmp_path / "single", {"scratch": False, "finetune": True})
    assert result["report"], "the chief wrote no report.html"
    for name, row in result["experiments"].items():
        assert not row["missing_files"] and row["status"] == "done", (name, row)
        assert row["workers_equal"], f"{name}: the two workers' predictions differ"
        assert row["same_test_rows"], f"{name}: not the single run's test images in its order"
    phases = pd.read_csv(tmp_path / "out" / "finetune" / "history.csv")["phase"].tolist()
    assert phases == ["head", "fine-tune"]
    assert not FEATURE_CACHE or "feature_cache" in (tmp_path / "out" / "finetune" / "manifest.json").read_text()
    assert result["experiments"]["finetune"]["matches"], result["experiments"]["finetune"]


def _wait_for_commits(folders: list, count: int, procs: list, timeout: float) -> None:
    """Until every folder's scratch backup has committed ``count`` epochs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError):
            if all(_committed_epochs(folder) >= count for folder in folders):
                return
        failed = [path for proc, _, path in procs if proc.poll() is not None]
        assert not failed, f"a worker stopped before backup {count}: {failed[0].read_text()[-3000:]}"
        time.sleep(0.1)
    raise AssertionError(f"no backup {count} in {folders} after {timeout}s")


def _committed_epochs(out) -> int:
    """How many epochs the last committed backup of the scratch model's training holds."""
    return json.loads((out / "scratch" / BACKUP / METADATA).read_text())["epoch"]


def _roll_back_commit(out) -> None:
    """Leave ``out``'s backup as a kill one moment earlier would have: epoch e's weights file
    written, its commit not yet (the commit then still names epoch e-1, whose file is kept)."""
    (out / "scratch" / BACKUP / METADATA).write_text(json.dumps({"epoch": _committed_epochs(out) - 1, "batch": 0}))


def _uninterrupted_learning_rates(config: dict, num_train: int) -> list[float]:
    """The learning rate history.csv logs after each epoch (the schedule after its last step)."""
    training = TrainingConfig(**config["experiments"][0]["training"])
    steps = steps_for(num_train, config["experiments"][0]["data"]["batch_size"])
    schedule = make_schedule(training.schedule, training.learning_rate, steps, training.epochs, training.warmup_epochs,
                             training.step_epochs)
    return [float(schedule((epoch + 1) * steps)) for epoch in range(training.epochs)]


def test_a_killed_worker_resumes_with_no_lost_or_repeated_epoch(tmp_path):
    """SIGKILL worker 1 (its whole process group, as a machine failure would) once both workers
    have committed the backup of 2 of 3 epochs; the chief stops too (its collectives fail).

    The race, made certain: worker 1's backup is then rolled back to what a kill just before its
    commit of epoch 2 leaves, so the chief holds one epoch more than its peer (as when a worker dies
    between the chief's backup and its own). Both rerun with --resume on the same ports (the
    README's recipe), agree on epoch 1's backup, and finish with each epoch exactly once, epoch 0
    kept as it was (restored, not trained again) and every epoch logging the learning rate of the
    uninterrupted schedule (the optimizer's step count restored with the agreed epoch)."""
    raw = small_config(epochs=3, fine_tune=False)
    config = write_config(tmp_path / "kill.yaml", raw)
    out, ports = tmp_path / "out", free_ports(2)
    history = out / "scratch" / "history.csv"
    procs = start_run(config, out, 2, ports=ports, label="killed")
    worker = tmp_path / "out.worker-1"
    try:
        _wait_for_commits([out, worker], 2, procs, timeout=600)
        first_epoch, second_epoch = (row for _, row in pd.read_csv(history).iterrows())
        os.killpg(procs[1][0].pid, signal.SIGKILL)
        procs[0][0].wait(timeout=180)  # the chief's collectives fail without its peer
    finally:
        for proc, log, _ in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
    assert procs[0][0].returncode != 0, "the chief finished without its peer"
    assert _committed_epochs(out) == _committed_epochs(worker) == 2
    _roll_back_commit(worker)
    run(config, out, 2, ports=ports, args=("--resume",), label="resumed", timeout=600)
    rows = pd.read_csv(history)
    assert rows["epoch"].tolist() == [0, 1, 2]
    assert rows.iloc[0]["loss"] == first_epoch["loss"] and rows.iloc[0]["epoch_seconds"] == first_epoch["epoch_seconds"]
    assert rows.iloc[1]["epoch_seconds"] != second_epoch["epoch_seconds"], "the chief did not go back to the agreed epoch"
    num_train = json.loads((out / "scratch" / "manifest.json").read_text())["data"]["train"]
    assert rows["learning_rate"].tolist() == pytest.approx(_uninterrupted_learning_rates(raw, num_train), abs=1e-6)
    for folder in (out, worker):
        assert all((folder / "scratch" / name).is_file() for name in RUN_FILES)
        assert '"status": "done"' in (folder / "scratch" / "manifest.json").read_text()
