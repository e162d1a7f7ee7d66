"""A self-test of multi-worker training: N localhost workers train a tiny model in lockstep.

Used by ``tests/test_multiworker.py`` and ``benchmarks/run.py``; not part of the library.
:func:`local_cluster_check` starts the workers (each ``python tests/multiworker_harness.py
--strategy ...``, one TensorFlow cluster per process) and compares their weights with one
plain process trained on the same global batch; :func:`local_batchnorm_check` checks that
:class:`~triptych.training.distribute.SyncBatchNormStatistics` keeps the workers' BatchNorm
statistics equal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import triptych
from triptych.training.distribute import (
    STRATEGIES,
    get_strategy,
    num_replicas,
    set_threads,
    strategy_scope,
    sync_batchnorm_callbacks,
    task,
)

TINY_IMAGES, TINY_SIZE, TINY_CLASSES, TINY_BATCH = 64, 16, 3, 16
# Where the workers import triptych from: the same source tree as this process.
TRIPTYCH_SOURCE = Path(triptych.__file__).resolve().parents[1]

# Tolerances: the workers all-reduce the same gradients, so they agree bit for bit; against one
# process, the gradient sum is taken in another order (float32 rounding, ~1e-7 relative per step).
WORKER_ATOL = 0.0
SINGLE_ATOL = 1e-4
LOSS_ATOL = 1e-4


# --------------------------------------------------------------------------- one worker


def _tiny_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (TINY_IMAGES, TINY_SIZE, TINY_SIZE, 3)).astype("float32")
    y = np.eye(TINY_CLASSES, dtype="float32")[rng.integers(0, TINY_CLASSES, TINY_IMAGES)]
    return x, y


def _tiny_model(batchnorm: bool = False):
    """A tiny conv net, by default with no BatchNorm (per-replica batch statistics would make
    the loss depend on how the batch is split)."""
    inputs = keras.Input((TINY_SIZE, TINY_SIZE, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv1")(inputs)
    if batchnorm:
        x = keras.layers.BatchNormalization(momentum=0.5, name="bn")(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(TINY_CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="tiny")


def _tiny_dataset(seed: int):
    ds = tf.data.Dataset.from_tensor_slices(_tiny_data(seed)).batch(TINY_BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _tiny_worker(args: argparse.Namespace) -> None:
    """One worker (or the single-process reference) of :func:`local_cluster_check`."""
    set_threads(1, 1)
    get_strategy(args.strategy)  # before any other TensorFlow op
    keras.utils.set_random_seed(args.seed)
    ds = _tiny_dataset(args.seed)
    with strategy_scope(args.strategy):
        model = _tiny_model(args.batchnorm)
        model.compile(
            keras.optimizers.SGD(0.1, momentum=0.9),
            keras.losses.CategoricalCrossentropy(),
            metrics=["accuracy"],
        )
    callbacks = sync_batchnorm_callbacks(model)
    if args.backup:
        callbacks.append(keras.callbacks.BackupAndRestore(args.backup, delete_checkpoint=False))
    history = model.fit(ds, epochs=args.epochs, verbose=0, callbacks=callbacks, shuffle=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kind, index = task()
    name = f"{args.strategy}{'-bn' if args.batchnorm else ''}-{kind}{index}"
    np.savez(out / f"{name}.npz", *model.get_weights())
    result = {
        "loss": [float(v) for v in history.history["loss"]],
        "epochs_run": len(history.history["loss"]),
        "replicas": num_replicas(args.strategy),
    }
    (out / f"{name}.json").write_text(json.dumps(result))


# --------------------------------------------------------------------------- starting workers


def free_ports(count: int) -> list[int]:
    """Ports free right now on localhost (bound to port 0 and released together)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("localhost", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _worker_env(strategy: str, cluster: dict, index: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "SLURM_PROCID")}
    env.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TRIPTYCH_SOURCE), env.get("PYTHONPATH")]))
    if strategy == "multiworker":
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
    return env


def _start(
    num_workers: int, strategy: str, out: Path, epochs: int, backup: Path | None, seed: int, batchnorm: bool = False
) -> list:
    """Start the workers of one run (each a ``python tests/multiworker_harness.py``)."""
    ports = free_ports(num_workers)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    procs = []
    for index in range(num_workers):
        command = [sys.executable, str(Path(__file__).resolve()), "--strategy", strategy, "--out", str(out)]
        command += ["--epochs", str(epochs), "--seed", str(seed)] + (["--batchnorm"] if batchnorm else [])
        if backup:
            command += ["--backup", str(backup / f"worker{index}")]
        path = out / f"{strategy}{'-bn' if batchnorm else ''}-worker{index}.log"
        log = open(path, "w")  # noqa: SIM115 - closed by _wait
        env = _worker_env(strategy, cluster, index)
        procs.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log, path))
    return procs


def _wait(procs: list, timeout: float) -> None:
    """Wait for every process; on a failure or timeout kill the rest and raise with its log."""
    deadline = time.monotonic() + timeout
    failed = []
    try:
        while not failed and any(proc.poll() is None for proc, _, _ in procs):
            failed = [(path, proc.returncode) for proc, _, path in procs if proc.returncode not in (None, 0)]
            if time.monotonic() > deadline:
                failed = [(path, "timeout") for proc, _, path in procs if proc.poll() is None]
            time.sleep(0.2)
        failed = failed or [(path, proc.returncode) for proc, _, path in procs if proc.returncode not in (None, 0)]
    finally:
        for proc, log, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    if failed:
        path, code = failed[0]
        tail = path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{path.stem} failed ({code}):\n{tail}")


def _read(out: Path, name: str) -> tuple[list[np.ndarray], dict]:
    with np.load(out / f"{name}.npz") as stored:
        weights = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    return weights, json.loads((out / f"{name}.json").read_text())


# --------------------------------------------------------------------------- the checks


def local_cluster_check(
    num_workers: int = 2,
    epochs: int = 2,
    workdir: str | Path | None = None,
    resume: bool = True,
    seed: int = 0,
    timeout: float = 150,
) -> dict:
    """Train the tiny model with ``num_workers`` localhost workers (MultiWorkerMirroredStrategy)
    and in one plain process with the same global batch; compare.

    With ``resume``, the workers first train ``epochs - 1`` epochs with BackupAndRestore, then
    are started again for ``epochs`` epochs and must resume from the backup (training only the
    last epoch): the final weights then match the uninterrupted single-process run only if
    weights *and* optimizer state were restored. Returns the differences (see ``matches``).
    """
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="triptych-mw-"))
        out = Path(workdir)
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        backup = out / "backup" if resume else None
        # The single-process reference runs beside the first multi-worker launch.
        reference = _start(1, "default", out, epochs, None, seed)
        if resume and epochs > 1:
            _wait(_start(num_workers, "multiworker", out, epochs - 1, backup, seed) + reference, timeout)
            reference = []
        _wait(_start(num_workers, "multiworker", out, epochs, backup, seed) + reference, timeout)
        single = _read(out, "default-worker0")
        workers = [_read(out, f"multiworker-worker{i}") for i in range(num_workers)]
        seconds = time.perf_counter() - started
    return _compare(single, workers, epochs, resume, seconds)


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(max(np.max(np.abs(x - y)) for x, y in zip(a, b)))


def _compare(single: tuple, workers: list[tuple], epochs: int, resume: bool, seconds: float) -> dict:
    """The differences between the workers, and between them and the single process."""
    single_weights, single_log = single
    first_weights, first = workers[0]
    between_workers = max((_max_diff(first_weights, w) for w, _ in workers[1:]), default=0.0)
    vs_single = max(_max_diff(single_weights, w) for w, _ in workers)
    # The (possibly resumed) multi-worker run logs the epochs it ran: compare those epochs' loss.
    last = first["loss"]
    loss_diff = max(abs(a - b) for a, b in zip(single_log["loss"][-len(last):], last))
    result = {
        "workers": len(workers),
        "replicas": first["replicas"],
        "epochs": epochs,
        "resumed": bool(resume and epochs > 1),
        "epochs_run_after_resume": first["epochs_run"],
        "max_weight_diff_between_workers": between_workers,
        "max_weight_diff_vs_single": vs_single,
        "max_loss_diff_vs_single": loss_diff,
        "single_loss": single_log["loss"],
        "worker_loss": last,
        "seconds": round(seconds, 1),
    }
    result["matches"] = matches(result)
    return result


def local_batchnorm_check(num_workers: int = 2, workdir: str | Path | None = None, seed: int = 0, timeout: float = 150) -> dict:
    """One epoch of the tiny model *with* BatchNorm on ``num_workers`` localhost workers: with
    :class:`SyncBatchNormStatistics` every weight, moving statistics included, must end equal."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="triptych-mw-bn-"))
        out = Path(workdir)
        out.mkdir(parents=True, exist_ok=True)
        _wait(_start(num_workers, "multiworker", out, 1, None, seed, batchnorm=True), timeout)
        workers = [_read(out, f"multiworker-bn-worker{i}")[0] for i in range(num_workers)]
    diff = max(_max_diff(workers[0], other) for other in workers[1:])
    return {"workers": num_workers, "max_weight_diff_between_workers": diff, "weights": len(workers[0])}


def matches(result: dict) -> bool:
    expected_epochs = 1 if result["resumed"] else result["epochs"]
    return (
        result["max_weight_diff_between_workers"] <= WORKER_ATOL
        and result["max_weight_diff_vs_single"] <= SINGLE_ATOL
        and result["max_loss_diff_vs_single"] <= LOSS_ATOL
        and result["epochs_run_after_resume"] == expected_epochs
        and result["replicas"] == result["workers"]
    )


def _main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="one worker of triptych's local multi-worker check")
    parser.add_argument("--strategy", choices=STRATEGIES, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backup", default=None)
    parser.add_argument("--batchnorm", action="store_true", help="add a BatchNormalization layer")
    _tiny_worker(parser.parse_args(argv))


if __name__ == "__main__":
    _main()
