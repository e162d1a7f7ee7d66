"""Two real localhost workers training in lockstep (MultiWorkerMirroredStrategy over gRPC, on CPU).

The harness (``multiworker_harness.py`` beside this file) starts processes: TensorFlow can host
one multi-worker cluster per process, configured before its first op. About a minute on a
2-core machine.
"""

from multiworker_harness import LOSS_ATOL, SINGLE_ATOL, local_batchnorm_check, local_cluster_check


def test_two_localhost_workers_train_in_lockstep_and_resume(tmp_path):
    """2 workers (global batch 16 = 8 per worker) vs one process (batch 16), 2 epochs of 4 steps.

    The workers first train 1 epoch with BackupAndRestore, are started again for 2 epochs and
    must resume (train only epoch 2). Tolerances (multiworker_harness.py): the workers' weights are
    identical (0.0: both apply the same all-reduced gradient); against the single process the
    weights and epoch-2 loss agree to 1e-4 (float32 sums taken in another order; seen: ~2e-7).
    """
    result = local_cluster_check(num_workers=2, epochs=2, workdir=tmp_path, resume=True, timeout=100)
    assert result["replicas"] == 2
    assert result["epochs_run_after_resume"] == 1, "the restarted workers did not resume from the backup"
    assert result["max_weight_diff_between_workers"] == 0.0
    assert result["max_weight_diff_vs_single"] <= SINGLE_ATOL, result
    assert result["max_loss_diff_vs_single"] <= LOSS_ATOL, result
    assert result["matches"]


def test_batchnorm_statistics_are_averaged_over_workers(tmp_path):
    """Keras 3 keeps one BatchNorm moving-statistics copy per replica (aggregation "none"); without
    SyncBatchNormStatistics the 2 workers' copies differ (~1e-2 here) and so do their predictions."""
    result = local_batchnorm_check(num_workers=2, workdir=tmp_path, timeout=100)
    assert result["max_weight_diff_between_workers"] == 0.0, result


_AGREEMENT_WORKER = """
import json, sys
from triptych.config import ExperimentConfig
from triptych.rundir import PrecisionInfo
from triptych.runner import agreed_auto_choices
from triptych.training.distribute import get_strategy, task

get_strategy("multiworker")
index = task()[1]
# What two machines of one cluster measured differently: the chief bf16 and fused BatchNorm, worker 1 neither.
exp = ExperimentConfig(name="e", model={"name": "resnet18", "options": {"fused_bn": index == 0}},
                       training={"strategy": "multiworker", "precision": ["bf16", "fp32"][index]})
local = PrecisionInfo(precision=["bf16", "fp32"][index], requested="auto", reason=f"measured on worker {index}")
exp, precision = agreed_auto_choices(exp, local)
print(json.dumps({"precision": precision.precision, "config_precision": exp.training.precision,
                  "fused_bn": exp.model.options["fused_bn"], "reason": precision.reason}))
"""


def test_workers_take_the_chiefs_auto_choices(tmp_path):
    """Each worker measures precision/fused BatchNorm ``auto`` on its own machine; they must still
    build one model in one precision (mixed choices crashed the collectives: issue 15)."""
    import json
    import subprocess
    import sys

    from multiworker_harness import _wait, _worker_env, free_ports

    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    procs = []
    for index in range(2):
        path = tmp_path / f"worker{index}.log"
        log = open(path, "w")  # noqa: SIM115 - closed by _wait
        command = [sys.executable, "-c", _AGREEMENT_WORKER]
        procs.append((subprocess.Popen(command, env=_worker_env("multiworker", cluster, index), stdout=log,
                                       stderr=subprocess.STDOUT), log, path))
    _wait(procs, timeout=120)
    results = [json.loads(path.read_text().strip().splitlines()[-1]) for _, _, path in procs]
    for result in results:
        assert (result["precision"], result["config_precision"], result["fused_bn"]) == ("bf16", "bf16", True), results
    assert results[0]["reason"] == "measured on worker 0"
    assert results[1]["reason"].startswith("the chief's choice (this worker measured fp32"), results[1]
