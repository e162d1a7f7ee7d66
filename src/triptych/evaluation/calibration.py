"""Calibration: expected calibration error and reliability-diagram data on the top-1 confidence.

Confidence is the largest class probability and "correct" means its class is the true one.
Bins are 15 equal-width intervals of [0, 1] (Guo et al. 2017), filled by
``scipy.stats.binned_statistic`` so counts, accuracies and confidences share one binning.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import binned_statistic

from triptych.evaluation.predictions import Predictions

N_BINS = 15


def calibration_summary(p: Predictions, n_bins: int = N_BINS) -> dict[str, Any]:
    """``{"ece", "n_bins", "bins": [{lower, upper, count, accuracy, confidence}]}``."""
    confidence = p.probs.max(axis=1)
    correct = (p.probs.argmax(axis=1) == p.y_true).astype(float)
    # Clip so a probability a hair above 1 (float error in softmax) still lands in the last bin.
    confidence = np.clip(confidence, 0.0, 1.0)
    stats = dict(range=(0.0, 1.0), bins=n_bins)
    count, edges, _ = binned_statistic(confidence, correct, statistic="count", **stats)
    accuracy, _, _ = binned_statistic(confidence, correct, statistic="mean", **stats)
    mean_conf, _, _ = binned_statistic(confidence, confidence, statistic="mean", **stats)
    filled = count > 0
    ece = float(np.sum(count[filled] / count.sum() * np.abs(accuracy[filled] - mean_conf[filled])))
    bins = [
        {
            "lower": float(edges[i]),
            "upper": float(edges[i + 1]),
            "count": int(count[i]),
            # Empty bins have no accuracy or confidence; None rather than a made-up 0.
            "accuracy": float(accuracy[i]) if filled[i] else None,
            "confidence": float(mean_conf[i]) if filled[i] else None,
        }
        for i in range(n_bins)
    ]
    return {"ece": ece, "n_bins": n_bins, "bins": bins}
