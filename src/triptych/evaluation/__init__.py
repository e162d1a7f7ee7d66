"""Test-set evaluation of saved runs: metrics, confidence intervals, calibration and McNemar tests.

Everything here works from a run directory's ``predictions.csv``; nothing imports TensorFlow,
so metrics can be recomputed on a machine without it.
"""

from triptych.evaluation.compare import mcnemar_pairwise, mcnemar_test
from triptych.evaluation.metrics import compute_metrics, evaluate_run, run_metrics
from triptych.evaluation.predictions import read_predictions_csv, validate_predictions

__all__ = [
    "compute_metrics",
    "evaluate_run",
    "mcnemar_pairwise",
    "mcnemar_test",
    "read_predictions_csv",
    "run_metrics",
    "validate_predictions",
]
