"""Test-set evaluation of saved runs: metrics, confidence intervals, calibration, McNemar tests,
and tests between models trained several times (repeats).

Everything here works from a run directory's ``predictions.csv``; nothing imports TensorFlow,
so metrics can be recomputed on a machine without it.
"""

from triptych.evaluation.compare import mcnemar_pairwise, mcnemar_test
from triptych.evaluation.metrics import compute_metrics, evaluate_run, run_metrics
from triptych.evaluation.predictions import read_predictions_csv, validate_predictions
from triptych.evaluation.repeated import compare_repeats, corrected_resampled_t_test, paired_t_test

__all__ = [
    "compare_repeats",
    "compute_metrics",
    "corrected_resampled_t_test",
    "evaluate_run",
    "mcnemar_pairwise",
    "mcnemar_test",
    "paired_t_test",
    "read_predictions_csv",
    "run_metrics",
    "validate_predictions",
]
