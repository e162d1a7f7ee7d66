"""Where training runs: one device, several GPUs of one machine, or several machines.

``training.strategy`` in a config picks a ``tf.distribute`` strategy:

- ``default``: no strategy (one CPU or GPU). Keras may then use XLA on a GPU.
- ``mirrored``: ``MirroredStrategy``, synchronous data parallelism over the GPUs of one machine.
- ``multiworker``: ``MultiWorkerMirroredStrategy`` across machines (each machine may have
  several GPUs). The cluster comes from ``TF_CONFIG`` when set, else from Slurm
  (``SLURM_PROCID`` ... under ``srun``), else the process is a single worker.

``data.batch_size`` is always the *global* batch: Keras splits each batch over the replicas,
so a run on N GPUs computes the same loss as one device with the same batch (BatchNorm aside:
each replica normalises with its own batch statistics; :class:`SyncBatchNormStatistics`
averages the moving statistics over the replicas before validation and checkpoints; set
per-replica batches of 32 or more). Under ``multiworker`` every worker runs the same
program; the chief (worker 0) writes the run directory, the others write theirs next to it
(``OUT.worker-<i>``), which also keeps their BackupAndRestore state apart.

Keras 3's ``model.fit`` needs a small patch to run under MultiWorkerMirroredStrategy
(keras-team/keras#20585): :mod:`triptych.training.keras_multiworker_shim`, applied here.

Also here: :func:`set_threads` (``triptych run --threads N``) and :func:`local_cluster_check`,
which starts N workers on localhost and checks that they train in lockstep (used by the tests
and ``benchmarks/run.py``).
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

from triptych.errors import TriptychError

STRATEGIES = ("default", "mirrored", "multiworker")
SLURM_PORT_ENV = "TRIPTYCH_SLURM_PORT"  # first port of the Slurm workers (default 8888)

_strategies: dict[str, object] = {}


# --------------------------------------------------------------------------- strategies


def cluster_resolver():
    """TF_CONFIG if set; else Slurm's environment under ``srun`` with several tasks; else a
    single local worker (TF_CONFIG resolver with an empty cluster)."""
    import tensorflow as tf

    resolvers = tf.distribute.cluster_resolver
    if os.environ.get("TF_CONFIG"):
        return resolvers.TFConfigClusterResolver()
    if os.environ.get("SLURM_PROCID") is not None and _slurm_tasks() > 1:
        return resolvers.SlurmClusterResolver(port_base=int(os.environ.get(SLURM_PORT_ENV, "8888")))
    return resolvers.TFConfigClusterResolver()


def _slurm_tasks() -> int:
    return int(os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SLURM_NTASKS") or 1)


def get_strategy(name: str):
    """The strategy for ``name`` (one per process: MultiWorkerMirroredStrategy can only be
    created once, and before TensorFlow runs its first operation). ``None`` for ``default``."""
    if name not in STRATEGIES:
        raise TriptychError(f"unknown training.strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    if name == "default":
        return None
    if name in _strategies:
        return _strategies[name]
    import tensorflow as tf

    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        from triptych.training import keras_multiworker_shim

        keras_multiworker_shim.apply()
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=cluster_resolver())
        except RuntimeError as err:
            raise TriptychError(
                f"cannot start the multi-worker strategy ({err}); it must be created before TensorFlow runs "
                "anything else in the process"
            ) from err
    _strategies[name] = strategy
    return strategy


def init_strategies(names) -> None:
    """Create the strategies a config needs up front (a multi-worker config must not mix in
    single-device experiments: every worker runs every experiment in lockstep)."""
    names = set(names)
    if "multiworker" in names and names != {"multiworker"}:
        raise TriptychError(
            "training.strategy: multiworker cannot be mixed with other strategies in one config "
            f"(found {', '.join(sorted(names))})"
        )
    for name in sorted(names):
        get_strategy(name)


def strategy_scope(name: str):
    """``with strategy_scope(cfg.strategy):`` build and compile models there. ``default``
    opens no scope (so that Keras keeps XLA on a single GPU)."""
    strategy = get_strategy(name)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


@contextlib.contextmanager
def training_scope(cfg):
    """Everything an experiment builds, compiles, trains and predicts with: under the
    strategy of ``cfg.strategy`` and the dtype policy of ``cfg.precision`` (a TrainingConfig)."""
    from triptych.training.precision import precision_scope

    with strategy_scope(cfg.strategy), precision_scope(cfg.precision):
        yield


def num_replicas(name: str) -> int:
    strategy = get_strategy(name)
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def task() -> tuple[str, int]:
    """``(task type, index)`` of this process in its cluster (``("worker", 0)`` when alone)."""
    if os.environ.get("TF_CONFIG"):
        spec = json.loads(os.environ["TF_CONFIG"]).get("task") or {}
        return str(spec.get("type", "worker")), int(spec.get("index", 0))
    if os.environ.get("SLURM_PROCID") is not None:
        return "worker", int(os.environ["SLURM_PROCID"])
    return "worker", 0


def is_chief() -> bool:
    """The ``chief`` task if the cluster names one, else worker 0."""
    kind, index = task()
    has_chief = bool(os.environ.get("TF_CONFIG")) and "chief" in (json.loads(os.environ["TF_CONFIG"]).get("cluster") or {})
    return kind == "chief" or (kind == "worker" and index == 0 and not has_chief)


def worker_output_dir(out: str | Path, strategies) -> Path:
    """Where this process writes: ``out`` for the chief (or any single-process run), else
    ``out.worker-<i>``, so that workers never write the same files."""
    out = Path(out)
    if "multiworker" not in set(strategies) or is_chief():
        return out
    kind, index = task()
    return out.with_name(f"{out.name}.{kind}-{index}")


def set_threads(threads: int | None, inter_op: int | None = None) -> None:
    """TensorFlow's thread pools (before it runs anything): ``threads`` intra-op (one op on
    several cores) and ``inter_op`` (independent ops at once; default 2 when threads > 1)."""
    if not threads:
        return
    import tensorflow as tf

    if threads < 1:
        raise TriptychError(f"--threads must be at least 1, got {threads}")
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op or min(2, threads))
    except RuntimeError as err:
        raise TriptychError(f"cannot set TensorFlow threads: {err}") from err


def sync_batchnorm_callbacks(model) -> list:
    """``[SyncBatchNormStatistics()]`` when ``model`` trains on several replicas, else ``[]``."""
    strategy = getattr(model, "_distribute_strategy", None)
    return [SyncBatchNormStatistics()] if strategy is not None and strategy.num_replicas_in_sync > 1 else []


class SyncBatchNormStatistics(keras.callbacks.Callback):
    """Average the BatchNorm moving statistics over the replicas before validation, at each
    epoch's end (before checkpoints) and at the end of training.

    Under tf.distribute each replica normalises with its own batch statistics (as PyTorch DDP
    does without SyncBN) and Keras 3 creates the moving statistics with aggregation "none", so
    every replica updates only its own copy: the copies drift apart, each worker validates and
    predicts its shard of the data with different statistics, and checkpoints keep replica 0's.
    Seen with 2 workers: the second half of predictions.csv disagreed with the saved model.
    """

    def __init__(self):
        super().__init__()
        self._sync = None

    def _build(self):
        import tensorflow as tf

        strategy = self.model.distribute_strategy
        variables = [
            variable.value
            for layer in self.model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)
            for variable in (layer.moving_mean, layer.moving_variance)
        ]

        def average_in_replica():
            context = tf.distribute.get_replica_context()
            means = context.all_reduce("MEAN", [tf.identity(v) for v in variables])  # local copies, one all-reduce
            for variable, mean in zip(variables, means):
                variable.assign(mean)

        @tf.function(autograph=False)
        def average():
            strategy.run(average_in_replica)

        return average if variables else (lambda: None)

    def sync(self) -> None:
        if self.model.distribute_strategy.num_replicas_in_sync < 2:
            return
        if self._sync is None:
            self._sync = self._build()
        self._sync()

    def on_test_begin(self, logs=None):
        self.sync()

    def on_epoch_end(self, epoch, logs=None):
        self.sync()

    def on_train_end(self, logs=None):
        self.sync()


# --------------------------------------------------------------------------- local cluster check

TINY_IMAGES, TINY_SIZE, TINY_CLASSES, TINY_BATCH = 64, 16, 3, 16


def _tiny_data(seed: int):
    import numpy as np

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


def _tiny_worker(args: argparse.Namespace) -> None:
    """One worker (or the single-process reference) of :func:`local_cluster_check`."""
    set_threads(1, 1)
    get_strategy(args.strategy)  # before any other TensorFlow op
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    x, y = _tiny_data(args.seed)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(TINY_BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = ds.with_options(options)
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


def _start(
    num_workers: int, strategy: str, out: Path, epochs: int, backup: Path | None, seed: int, batchnorm: bool = False
) -> list:
    """Start the workers of one run (each a ``python -m triptych.training.distribute``)."""
    ports = free_ports(num_workers)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    procs = []
    for index in range(num_workers):
        env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "SLURM_PROCID")}
        env.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")]))
        if strategy == "multiworker":
            env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        command = [sys.executable, "-m", "triptych.training.distribute", "--strategy", strategy, "--out", str(out)]
        command += ["--epochs", str(epochs), "--seed", str(seed)] + (["--batchnorm"] if batchnorm else [])
        if backup:
            command += ["--backup", str(backup / f"worker{index}")]
        path = out / f"{strategy}{'-bn' if batchnorm else ''}-worker{index}.log"
        log = open(path, "w")  # noqa: SIM115 - closed by _wait
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


def _read(out: Path, name: str):
    import numpy as np

    with np.load(out / f"{name}.npz") as stored:
        weights = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    return weights, json.loads((out / f"{name}.json").read_text())


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
    import numpy as np

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
        single_weights, single = _read(out, "default-worker0")
        workers = [_read(out, f"multiworker-worker{i}") for i in range(num_workers)]
        seconds = time.perf_counter() - started

    def max_diff(a, b):
        return float(max(np.max(np.abs(x - y)) for x, y in zip(a, b)))

    first_weights, first = workers[0]
    between_workers = max(max_diff(first_weights, w) for w, _ in workers[1:]) if num_workers > 1 else 0.0
    vs_single = max(max_diff(single_weights, w) for w, _ in workers)
    # The (possibly resumed) multi-worker run logs the epochs it ran: compare those epochs' loss.
    last = first["loss"]
    loss_diff = max(abs(a - b) for a, b in zip(single["loss"][-len(last):], last))
    result = {
        "workers": num_workers,
        "replicas": first["replicas"],
        "epochs": epochs,
        "resumed": bool(resume and epochs > 1),
        "epochs_run_after_resume": first["epochs_run"],
        "max_weight_diff_between_workers": between_workers,
        "max_weight_diff_vs_single": vs_single,
        "max_loss_diff_vs_single": loss_diff,
        "single_loss": single["loss"],
        "worker_loss": last,
        "seconds": round(seconds, 1),
    }
    result["matches"] = matches(result)
    return result


def local_batchnorm_check(num_workers: int = 2, workdir: str | Path | None = None, seed: int = 0, timeout: float = 150) -> dict:
    """One epoch of the tiny model *with* BatchNorm on ``num_workers`` localhost workers: with
    :class:`SyncBatchNormStatistics` every weight, moving statistics included, must end equal."""
    import numpy as np

    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="triptych-mw-bn-"))
        out = Path(workdir)
        out.mkdir(parents=True, exist_ok=True)
        _wait(_start(num_workers, "multiworker", out, 1, None, seed, batchnorm=True), timeout)
        workers = [_read(out, f"multiworker-bn-worker{i}")[0] for i in range(num_workers)]
    diff = max(float(np.max(np.abs(a - b))) for other in workers[1:] for a, b in zip(workers[0], other))
    return {"workers": num_workers, "max_weight_diff_between_workers": diff, "weights": len(workers[0])}


# Tolerances: the workers all-reduce the same gradients, so they agree bit for bit; against one
# process, the gradient sum is taken in another order (float32 rounding, ~1e-7 relative per step).
WORKER_ATOL = 0.0
SINGLE_ATOL = 1e-4
LOSS_ATOL = 1e-4


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
