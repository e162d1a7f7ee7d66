"""``triptych run`` on N localhost workers (TF_CONFIG), compared with one process: the product, end to end.

Used by ``tests/test_multiworker_run.py`` and ``benchmarks/run.py``; not part of the library. Each
worker is the real CLI (``python -m triptych run CONFIG --out OUT``) with ``TF_CONFIG`` naming
every worker on localhost, exactly as the README's recipe starts it on several machines.
:func:`product_check` runs a small config (a from-scratch ResNet and a two-phase fine-tune of a
keras.applications backbone) on 2 workers and in one process with the same global batch and
compares what the chief wrote with the single run.

Tolerances. The two workers apply the same all-reduced gradients: their predictions are equal
(0.0). Against one process, only a model whose BatchNorm is frozen can match: each worker
normalises with the batch statistics of its own half of the global batch (README, "several
machines"), so a from-scratch ResNet follows another trajectory and is only checked for the same
test images and labels in the same order. The fine-tune (BatchNorm frozen in both phases,
dropout 0) computes the same function in both; its probabilities may differ by float32
summation order (the all-reduce adds the workers' gradient halves, one process the whole batch:
~1e-7 relative per step), so they must agree to PROB_ATOL = 1e-4 and its metrics to
METRIC_ATOL = 1e-6 (the same predicted class for every image). Measured on 2 CPU workers
(issue 15), each cause fixed in training/keras_multiworker_shim.py: 5.8e-3 while Keras drew a
batch from an extra pass of the training data before the first epoch (each worker's seeded
shuffle ran one epoch ahead of one process's; 0.0 once fixed, with a batch of 10 = 5 + 5);
with the global batch of 7 used here (4 + 3 images on the 2 workers), 1.6e-3 while each
replica's mean loss counted equally, 7.5e-9 once weighed by its share of the batch.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from multiworker_harness import _wait, _worker_env, free_ports

PROB_ATOL = 1e-4
METRIC_ATOL = 1e-6
RUN_FILES = ("config.yaml", "manifest.json", "history.csv", "model.keras", "predictions.csv", "metrics.json")
# The fine-tune's head phase on the feature cache, as a user runs it (extraction gives one row per image
# under any strategy: training/feature_cache.extract).
FEATURE_CACHE = True
_DATA = {"dataset": "cifar10", "train_per_class": 4, "test_per_class": 2, "val_fraction": 0.25, "batch_size": 10}
# Precision and fused BatchNorm pinned: "auto" measures speed in each process, and the measurements
# disagreed (one run: bf16 on both workers, fp32 alone; a worker choosing fused BatchNorm and its peer
# not leaves lockstep). Workers agreeing on such choices is an open product issue (see issue 15's report).
_TRAINING = {"tensorboard": False, "strategy": "multiworker", "precision": "fp32"}


def small_config(epochs: int = 2, fine_tune: bool = True) -> dict:
    """A from-scratch ResNet-18 at 16 px and (with ``fine_tune``) MobileNet at 32 px in two phases."""
    experiments = [{
        "name": "scratch",
        "model": {"name": "resnet18", "options": {"stem": "cifar", "fused_bn": False}},
        "data": {**_DATA, "image_size": 16},
        "training": {"epochs": epochs, "learning_rate": 0.01, **_TRAINING},
    }]
    if fine_tune:
        experiments.append({
            "name": "finetune",
            "model": {"name": "mobilenet", "weights": None, "options": {"dropout": 0.0}},
            # A global batch of 7: 4 + 3 images on 2 workers, which Keras alone would weigh unevenly.
            "data": {**_DATA, "image_size": 32, "batch_size": 7},
            "training": {"epochs": 1, "optimizer": "sgd", "learning_rate": 0.1, **_TRAINING,
                         "freeze_base": True, "feature_cache": FEATURE_CACHE,
                         "fine_tune": {"epochs": 1, "optimizer": "sgd", "learning_rate": 0.01, "unfreeze_layers": 6}},
        })
    return {"seed": 0, "title": "multi-worker check", "experiments": experiments}


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def start_run(
    config: Path, out: Path, workers: int, *, ports: list[int] | None = None, args: tuple[str, ...] = (), label: str = "run"
) -> list:
    """Start ``triptych run`` on ``workers`` localhost workers (1: one plain process, strategy default).

    Returns the processes as the harness's ``_wait`` takes them; each worker is its own process
    group (``proc.pid``), so that a test can kill a whole worker as a machine failure would.
    """
    cluster = {"worker": [f"localhost:{port}" for port in (ports or free_ports(workers))]}
    strategy = "multiworker" if workers > 1 else "default"
    extra = () if workers > 1 else ("--set", "training.strategy=default")
    procs = []
    for index in range(workers):
        command = [sys.executable, "-m", "triptych", "run", str(config), "--out", str(out), *extra, *args]
        path = out.with_name(f"{out.name}-{label}-worker{index}.log")
        log = open(path, "w")  # noqa: SIM115 - closed by _wait
        proc = subprocess.Popen(command, env=_worker_env(strategy, cluster, index), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        procs.append((proc, log, path))
    return procs


def run(config: Path, out: Path, workers: int, timeout: float, **kwargs) -> float:
    """Run to the end (raises with the log of a failed worker); returns the wall time in seconds."""
    started = time.perf_counter()
    _wait(start_run(config, out, workers, **kwargs), timeout)
    return time.perf_counter() - started


def compare(out: Path, single: Path, experiments: dict[str, bool]) -> dict:
    """The chief's run directories vs worker 1's and the single run's; ``experiments`` maps each
    experiment to whether it must match the single run numerically (frozen BatchNorm)."""
    result = {"experiments": {}, "report": (out / "report.html").is_file()}
    for name, must_match in experiments.items():
        chief, worker, alone = out / name, out.with_name(f"{out.name}.worker-1") / name, single / name
        predictions = [pd.read_csv(d / "predictions.csv") for d in (chief, worker, alone)]
        probs = [c for c in predictions[0].columns if c.startswith("prob_")]
        metrics = [json.loads((d / "metrics.json").read_text()) for d in (chief, alone)]
        row = {
            "missing_files": [f for f in RUN_FILES if not (chief / f).is_file()],
            "status": json.loads((chief / "manifest.json").read_text())["status"],
            "workers_equal": predictions[0].equals(predictions[1]),
            "same_test_rows": predictions[0][["path", "y_true"]].equals(predictions[2][["path", "y_true"]]),
            "max_prob_diff_vs_single": float((predictions[0][probs] - predictions[2][probs]).abs().max().max()),
            "accuracy": [m["accuracy"] for m in metrics],
            "macro_f1": [m["macro_f1"] for m in metrics],
            "must_match_single": must_match,
        }
        row["matches"] = _matches(row)
        result["experiments"][name] = row
    result["matches"] = result["report"] and all(r["matches"] for r in result["experiments"].values())
    return result


def _matches(row: dict) -> bool:
    complete = not row["missing_files"] and row["status"] == "done"
    numbers = (
        row["max_prob_diff_vs_single"] <= PROB_ATOL
        and abs(row["accuracy"][0] - row["accuracy"][1]) <= METRIC_ATOL
        and abs(row["macro_f1"][0] - row["macro_f1"][1]) <= METRIC_ATOL
    )
    return complete and row["workers_equal"] and row["same_test_rows"] and (numbers or not row["must_match_single"])


def product_check(workdir: str | Path | None = None, timeout: float = 900) -> dict:
    """The small config on 2 workers and in one process (started together); compared."""
    with contextlib.ExitStack() as stack:
        root = Path(workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="triptych-mwrun-")))
        config = write_config(root / "small.yaml", small_config())
        started = time.perf_counter()
        _wait(start_run(config, root / "out", 2) + start_run(config, root / "single", 1), timeout)
        result = compare(root / "out", root / "single", {"scratch": False, "finetune": True})
        result["seconds"] = round(time.perf_counter() - started, 1)
    return result
