"""Make Keras 3's ``model.fit`` work under ``tf.distribute.MultiWorkerMirroredStrategy``.

Upstream bug: https://github.com/keras-team/keras/issues/20585 (open as of Keras 3.15.1).
With the TensorFlow backend, ``fit`` under MultiWorkerMirroredStrategy fails in two places of
``keras/src/backend/tensorflow/trainer.py``:

1. ``TensorFlowTrainer._maybe_symbolic_build`` builds the model from the first batch and, when
   that batch is distributed (``PerReplica``), *reduces the data batch itself* across workers
   with ``strategy.reduce("MEAN", batch, axis=None)``: a collective over the images (and the
   labels' dtype) that only needs their shapes. It also draws that batch from a fresh
   iterator of the training dataset, one pass more than one process makes: a dataset that
   reshuffles on each pass (seeded: the same on every worker) then shows epoch e the order
   one process shows epoch e+1, so a 2-worker run trained on other batches than one process
   (measured: the MobileNet head phase of ``tests/test_multiworker_run.py`` differed by up to
   5.8e-3 in probability). We build from the dataset's element spec (shapes and dtypes: all
   the symbolic build reads), iterating nothing.
2. ``reduce_per_replica(..., reduction="auto")`` reduces every training output across workers
   with ``strategy.reduce("MEAN", v, axis=0)``; the outputs are scalar metrics (loss,
   accuracy), which have no axis 0. We reduce scalars with ``axis=None`` (the mean across
   workers; each worker's value is the mean over its equally sized shard of the global batch).

And one place where it trains differently from one process with the same global batch:

3. Each replica's loss is the mean over its own share of the batch, scaled by 1/replicas
   (``scale_loss_for_distribution``), so the summed gradients are the mean of the replicas'
   means: not the batch mean when a batch splits unevenly (a global batch of 7 on 2 workers is
   4 + 3 images; so is often an epoch's last batch). Measured on the fine-tune of
   ``tests/multiworker_run_check.py`` with batch 7: max probability difference 1.6e-3 against
   one process. :func:`compute_loss` weighs each replica's loss by its share of the batch
   (``local images x replicas / global images``, one scalar all-reduce a step): the gradients are
   then those of the batch mean, as in one process (measured: 7e-9). Even splits are unchanged
   (the factor is 1). What Keras logs is still each worker's mean, averaged over the workers:
   with uneven splits the logged loss and validation metrics may differ slightly from one
   process's (the weights do not).

Nothing else changes: gradients are still all-reduced by the strategy, so the workers stay in
lockstep (``tests/test_multiworker.py`` checks identical weights and the single-worker loss).

The patch is version-guarded: :func:`apply` patches only when the Keras source still contains
the two faulty lines it corrects (else it warns and leaves Keras alone, as the bug may be fixed),
and ``test_keras_multiworker_shim`` fails loudly when Keras is upgraded past the tested
versions, so that someone re-checks the issue and removes this module once it is fixed.
"""

from __future__ import annotations

import inspect
import warnings

import keras
import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer  # the module patched here

UPSTREAM_ISSUE = "https://github.com/keras-team/keras/issues/20585"
# Keras versions on which the patched functions were read and the 2-worker test passed.
TESTED_KERAS_VERSIONS = ("3.15.1",)
# The faulty lines, as they appear in keras/src/backend/tensorflow/trainer.py.
EXPECTED_SYMBOLIC_BUILD_LINE = "data_batch = self.distribute_strategy.reduce("
EXPECTED_REDUCE_LINE = 'return strategy.reduce("MEAN", v, axis=0)'

_applied = False


def faulty_lines_present() -> dict[str, bool]:
    """Whether Keras still has each of the two lines this shim corrects."""
    build_source = inspect.getsource(_original("_maybe_symbolic_build", trainer.TensorFlowTrainer))
    reduce_source = inspect.getsource(_original("reduce_per_replica", trainer))
    return {
        "_maybe_symbolic_build": EXPECTED_SYMBOLIC_BUILD_LINE in build_source,
        "reduce_per_replica": EXPECTED_REDUCE_LINE in reduce_source,
    }


def _original(name: str, owner):
    value = getattr(owner, name)
    return getattr(value, "__triptych_original__", value)


def is_applied() -> bool:
    return _applied


def apply() -> bool:
    """Patch Keras (idempotent). Returns True when the patch is in place."""
    global _applied
    if _applied:
        return True
    present = faulty_lines_present()
    if not all(present.values()):
        warnings.warn(
            f"keras {keras.__version__}: the code patched for {UPSTREAM_ISSUE} has changed "
            f"({', '.join(k for k, v in present.items() if not v)}); not patching. If multi-worker fit "
            "fails, re-check the issue and triptych/training/keras_multiworker_shim.py",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    if keras.__version__ not in TESTED_KERAS_VERSIONS:
        warnings.warn(
            f"keras {keras.__version__} is not among the versions the multi-worker shim was tested with "
            f"({', '.join(TESTED_KERAS_VERSIONS)}); patching anyway ({UPSTREAM_ISSUE})",
            RuntimeWarning,
            stacklevel=2,
        )
    original_build = trainer.TensorFlowTrainer._maybe_symbolic_build
    original_reduce = trainer.reduce_per_replica
    _maybe_symbolic_build.__triptych_original__ = original_build
    reduce_per_replica.__triptych_original__ = original_reduce
    compute_loss.__triptych_original__ = trainer.TensorFlowTrainer.compute_loss
    trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    trainer.TensorFlowTrainer.compute_loss = compute_loss
    trainer.reduce_per_replica = reduce_per_replica  # looked up as a module global at trace time
    _applied = True
    return True


# --------------------------------------------------------------------------- the corrected functions


def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    """Keras 3.15.1's ``TensorFlowTrainer._maybe_symbolic_build``, building from the dataset's
    element spec instead of a cross-worker reduction of a batch drawn from an extra pass."""
    if self._distribute_strategy is None:
        return
    if iterator is not None:
        # TensorSpecs have the .shape and .dtype that _symbolic_build turns into KerasTensors.
        data_batch = iterator.data_adapter.get_tf_dataset().element_spec
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def reduce_per_replica(values, strategy, reduction):
    """Keras's ``reduce_per_replica``; under multi-worker collectives, scalars are averaged
    across workers with ``axis=None`` (Keras uses ``axis=0``, which a scalar does not have)."""
    original = reduce_per_replica.__triptych_original__
    if reduction not in ("auto", "mean") or not trainer._collective_all_reduce_multi_worker(strategy):
        return original(values, strategy, reduction)

    def _reduce(v):
        if _rank(v) == 0:
            return strategy.reduce("MEAN", v, axis=None)
        return original(v, strategy, reduction)

    return tree.map_structure(_reduce, values)


def _rank(value) -> int | None:
    if isinstance(value, tf.distribute.DistributedValues):
        value = value.values[0]
    shape = getattr(value, "shape", None)
    return None if shape is None else shape.rank


def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
    """Keras's ``Trainer.compute_loss``; in training, each replica's loss weighted by its share of
    the global batch (point 3 above)."""
    original = compute_loss.__triptych_original__
    loss = original(self, x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
    # Only the training loss has gradients; validation keeps Keras's per-replica mean (val_loss).
    return loss * _batch_share(y_pred, loss.dtype) if training else loss


def _batch_share(y_pred, dtype):
    """``local images x replicas / global images`` in a replica context of several replicas, else 1."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync < 2:
        return tf.constant(1, dtype)
    local = tf.cast(tf.shape(tree.flatten(y_pred)[0])[0], dtype)
    return local * context.num_replicas_in_sync / context.all_reduce("SUM", local)
