"""Calibration bins: counts add up, empty bins stay empty, a calibrated model scores near 0."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from triptych.evaluation import validate_predictions
from triptych.evaluation.calibration import calibration_summary


def predictions(conf: np.ndarray, correct: np.ndarray) -> pd.DataFrame:
    # Two classes: class "a" gets probability conf; the true class is "a" where correct.
    return pd.DataFrame({
        "path": [f"{i}.png" for i in range(len(conf))],
        "y_true": np.where(correct, "a", "b"),
        "y_pred": "a",
        "prob_a": conf,
        "prob_b": 1 - conf,
    })


def test_bins_cover_every_image_and_empty_bins_are_none():
    summary = calibration_summary(validate_predictions(predictions(np.array([0.95, 0.95, 0.7]), np.array([True, False, True]))))
    assert summary["n_bins"] == 15 and len(summary["bins"]) == 15
    assert sum(b["count"] for b in summary["bins"]) == 3
    empty = [b for b in summary["bins"] if b["count"] == 0]
    assert empty and all(b["accuracy"] is None and b["confidence"] is None for b in empty)
    assert summary["bins"][0]["lower"] == 0.0 and summary["bins"][-1]["upper"] == 1.0
    # |0.5 - 0.95| * 2/3 + |1 - 0.7| * 1/3
    assert summary["ece"] == pytest.approx(0.45 * 2 / 3 + 0.3 / 3)


def test_well_calibrated_scores_have_small_ece():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 20000)
    summary = calibration_summary(validate_predictions(predictions(conf, rng.uniform(size=conf.size) < conf)))
    assert summary["ece"] < 0.02


def test_confidence_of_exactly_one_lands_in_last_bin():
    summary = calibration_summary(validate_predictions(predictions(np.array([1.0, 1.0]), np.array([True, True]))))
    assert summary["bins"][-1]["count"] == 2 and summary["ece"] == pytest.approx(0.0)
