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
(``OUT.worker-<i>``), which also keeps their epoch backups apart (:mod:`triptych.training.backup`).

Keras 3's ``model.fit`` needs a small patch to run under MultiWorkerMirroredStrategy
(keras-team/keras#20585): :mod:`triptych.training.keras_multiworker_shim`, applied here.

Also here: :func:`set_threads` (``triptych run --threads N``). ``tests/multiworker_harness.py``
starts N workers on localhost and checks that they train in lockstep (tests and benchmarks).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import keras
import tensorflow as tf

from triptych.errors import InvalidArgumentError, TriptychError
from triptych.training import keras_multiworker_shim
from triptych.training.precision import precision_scope

STRATEGIES = ("default", "mirrored", "multiworker")
SLURM_PORT_ENV = "TRIPTYCH_SLURM_PORT"  # first port of the Slurm workers (default 8888)

_strategies: dict[str, object] = {}


# --------------------------------------------------------------------------- strategies


def cluster_resolver():
    """TF_CONFIG if set; else Slurm's environment under ``srun`` with several tasks; else a
    single local worker (TF_CONFIG resolver with an empty cluster)."""
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
        raise InvalidArgumentError(f"unknown training.strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    if name == "default":
        return None
    if name in _strategies:
        return _strategies[name]
    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
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
        raise InvalidArgumentError(
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
    with strategy_scope(cfg.strategy), precision_scope(cfg.precision):
        yield


def num_replicas(name: str) -> int:
    strategy = get_strategy(name)
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def gathered_over_replicas(strategy, values: list[int]) -> list[list[int]]:
    """Every replica's ``values``, one row per replica in replica order (the chief's first
    replica first); every worker must call it, in the same order. ``[values]`` with one replica."""
    if strategy is None or strategy.num_replicas_in_sync < 2:
        return [list(values)]
    local = tf.constant([values], tf.int64)

    @tf.function(autograph=False)
    def gather():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_gather(local, axis=0))

    return strategy.experimental_local_results(gather())[0].numpy().tolist()


def chief_values(strategy, values: list[int]) -> list[int]:
    """The chief's ``values`` on every worker of ``strategy``: for what each process decides on
    its own, e.g. a speed measured on its machine, that all workers must nevertheless decide alike."""
    return [int(v) for v in gathered_over_replicas(strategy, values)[0]]


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
    if threads < 1:
        raise InvalidArgumentError(f"threads must be at least 1, got {threads}")
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
