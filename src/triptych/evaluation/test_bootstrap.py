"""The vectorised bootstrap agrees with scikit-learn on explicit resamples, and behaves like a CI."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from triptych.evaluation import compute_metrics, validate_predictions
from triptych.evaluation.bootstrap import (
    balanced_accuracy_resampled,
    macro_auc_resampled,
    macro_f1_resampled,
    percentile_interval,
)
from tests.fixtures.synthetic_runs import synthetic_predictions


@pytest.fixture(scope="module")
def preds():
    df = synthetic_predictions(150, skill=1.0, seed=11)
    # Rounding creates tied scores, the case where AUC needs its "ties count half" rule.
    for c in [c for c in df.columns if c.startswith("prob_")]:
        df[c] = df[c].round(1)
    return validate_predictions(df)


def test_vectorised_statistics_match_sklearn_per_resample(preds):
    rng = np.random.default_rng(0)
    idx = rng.integers(0, preds.n, size=(25, preds.n))
    k = len(preds.class_names)
    f1 = macro_f1_resampled(preds.y_true[idx], preds.y_pred[idx], k)
    auc = macro_auc_resampled(preds, idx, list(range(k)))
    for b, rows in enumerate(idx):
        y, yp, probs = preds.y_true[rows], preds.y_pred[rows], preds.probs[rows]
        assert f1[b] == pytest.approx(f1_score(y, yp, labels=range(k), average="macro", zero_division=np.nan))
        expected = np.mean([roc_auc_score(y == c, probs[:, c]) for c in range(k)])
        assert auc[b] == pytest.approx(expected)


def test_macro_f1_ignores_classes_absent_from_truth_and_predictions():
    y = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1]])
    # class 2 never occurs: sklearn (zero_division=nan) averages over classes 0 and 1 only.
    expected = f1_score(y[0], pred[0], labels=[0, 1, 2], average="macro", zero_division=np.nan)
    assert macro_f1_resampled(y, pred, 3)[0] == pytest.approx(expected)


def test_ci_contains_point_estimate_and_is_seeded():
    df = synthetic_predictions(300, seed=4)
    m = compute_metrics(df, seed=1, n_resamples=1000)
    for key in ("accuracy", "macro_f1", "macro_auc"):
        lo, hi = m[f"{key}_ci95"]
        assert lo < m[key] < hi
    assert compute_metrics(df, seed=1, n_resamples=1000)["macro_auc_ci95"] == m["macro_auc_ci95"]
    assert m["bootstrap"] == {"n_resamples": 1000, "seed": 1, "method": "percentile", "confidence": 0.95}


def test_ci_narrows_with_more_data():
    small, large = (compute_metrics(synthetic_predictions(n, seed=2, skill=1.5), n_resamples=500) for n in (100, 2000))
    for key in ("accuracy", "macro_f1", "macro_auc"):
        width = {name: m[f"{key}_ci95"][1] - m[f"{key}_ci95"][0] for name, m in (("small", small), ("large", large))}
        assert width["large"] < width["small"] / 2  # ~ 1/sqrt(n): 4.5x narrower expected


def test_percentile_interval_skips_undefined_resamples():
    assert percentile_interval(np.array([np.nan, np.nan])) is None
    lo, hi = percentile_interval(np.array([np.nan, 0.5, 0.5]))
    assert lo == hi == 0.5


def test_saved_intervals_equal_a_plain_sklearn_bootstrap_on_the_same_draws():
    df = synthetic_predictions(100, seed=9, skill=1.2)
    m = compute_metrics(df, seed=3, n_resamples=100)
    p = validate_predictions(df)
    # Same generator and draw shape as the implementation (one block for this size).
    idx = np.random.default_rng(3).integers(0, p.n, size=(100, p.n))
    acc, f1, auc = [], [], []
    for rows in idx:
        y, yp, probs = p.y_true[rows], p.y_pred[rows], p.probs[rows]
        acc.append(np.mean(y == yp))
        f1.append(f1_score(y, yp, labels=range(3), average="macro", zero_division=np.nan))
        auc.append(np.mean([roc_auc_score(y == c, probs[:, c]) for c in range(3)]))
    for key, values in (("accuracy", acc), ("macro_f1", f1), ("macro_auc", auc)):
        assert m[f"{key}_ci95"] == pytest.approx(list(np.percentile(values, [2.5, 97.5])))


def test_balanced_accuracy_matches_sklearn_per_resample(preds):
    idx = np.random.default_rng(5).integers(0, preds.n, size=(25, preds.n))
    got = balanced_accuracy_resampled(preds.y_true[idx], preds.y_pred[idx], len(preds.class_names))
    for b, rows in enumerate(idx):
        assert got[b] == pytest.approx(balanced_accuracy_score(preds.y_true[rows], preds.y_pred[rows]))


def test_balanced_accuracy_averages_only_classes_in_the_truth():
    # class 0: 1 of 2 right; class 1: 2 of 2; class 2 only predicted, never true: left out.
    y, pred = np.array([[0, 0, 1, 1]]), np.array([[0, 2, 1, 1]])
    assert balanced_accuracy_resampled(y, pred, 3)[0] == pytest.approx(0.75)
    m = compute_metrics(synthetic_predictions(300, seed=4), seed=1, n_resamples=500)
    lo, hi = m["balanced_accuracy_ci95"]
    assert lo < m["balanced_accuracy"] < hi
