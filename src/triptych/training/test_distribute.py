"""tf.distribute: strategy choice, worker roles, thread settings and the Keras multi-worker shim.

Two real localhost workers training in lockstep: ``tests/test_multiworker.py``.
"""

import argparse
import inspect
import json

import keras
import pytest
from keras.src.backend.tensorflow import trainer

from triptych.cli import run as run_cli
from triptych.errors import InvalidArgumentError, TriptychError
from triptych.training import distribute, keras_multiworker_shim


def test_keras_multiworker_shim_still_matches_keras():
    """Fails loudly when Keras changes: re-check keras-team/keras#20585, then update or drop the shim."""
    assert keras.__version__ in keras_multiworker_shim.TESTED_KERAS_VERSIONS, (
        f"keras {keras.__version__} is new to the multi-worker shim: check {keras_multiworker_shim.UPSTREAM_ISSUE}; "
        "if still open, run this test file and add the version to TESTED_KERAS_VERSIONS; if fixed, delete the shim"
    )
    assert keras_multiworker_shim.faulty_lines_present() == {"_maybe_symbolic_build": True, "reduce_per_replica": True}
    # The corrected functions keep the signatures Keras calls them with.
    original_build = keras_multiworker_shim._original("_maybe_symbolic_build", trainer.TensorFlowTrainer)
    original_reduce = keras_multiworker_shim._original("reduce_per_replica", trainer)
    assert inspect.signature(original_build) == inspect.signature(keras_multiworker_shim._maybe_symbolic_build)
    assert inspect.signature(original_reduce) == inspect.signature(keras_multiworker_shim.reduce_per_replica)
    original_loss = keras_multiworker_shim._original("compute_loss", trainer.TensorFlowTrainer)
    assert inspect.signature(original_loss) == inspect.signature(keras_multiworker_shim.compute_loss)
    assert callable(trainer._collective_all_reduce_multi_worker)


def test_strategy_names_and_default_opens_no_scope():
    assert distribute.get_strategy("default") is None
    assert distribute.num_replicas("default") == 1
    with pytest.raises(TriptychError, match="multiworker"):
        distribute.get_strategy("tpu")
    with pytest.raises(TriptychError, match="cannot be mixed"):
        distribute.init_strategies(["multiworker", "default"])


def test_worker_roles_from_tf_config_and_slurm(monkeypatch, tmp_path):
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.task() == ("worker", 0) and distribute.is_chief()
    cluster = {"worker": ["a:1", "b:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert distribute.task() == ("worker", 1) and not distribute.is_chief()
    assert distribute.worker_output_dir(tmp_path / "runs", ["multiworker"]) == tmp_path / "runs.worker-1"
    assert distribute.worker_output_dir(tmp_path / "runs", ["default"]) == tmp_path / "runs"
    resolver = distribute.cluster_resolver()
    assert resolver.cluster_spec().as_dict() == cluster and resolver.task_id == 1
    with_chief = {"chief": ["c:0"], **cluster}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}}))
    assert not distribute.is_chief()  # a named chief writes OUT, not worker 0
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": with_chief, "task": {"type": "chief", "index": 0}}))
    assert distribute.is_chief()
    monkeypatch.delenv("TF_CONFIG")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert distribute.is_chief()


def test_threads_option_is_on_triptych_run():
    parser = run_cli.register(argparse.ArgumentParser().add_subparsers(), "run", "")
    assert parser.parse_args(["c.yaml", "--out", "o", "--threads", "2"]).threads == 2
    distribute.set_threads(None)  # no-op
    with pytest.raises(InvalidArgumentError, match="threads must be at least 1, got -2"):
        distribute.set_threads(-2)


def test_sync_batchnorm_callback_only_for_several_replicas():
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()])
    assert distribute.sync_batchnorm_callbacks(model) == []
