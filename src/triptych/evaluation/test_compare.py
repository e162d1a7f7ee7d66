"""McNemar: textbook p-values, pairing on path, and refusing unpaired test sets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from triptych.errors import TriptychError
from triptych.evaluation import mcnemar_pairwise, mcnemar_test
from triptych.evaluation.compare import display_names, mcnemar_frames
from tests.fixtures.synthetic_runs import synthetic_predictions, write_synthetic_run


def outcomes(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([True] * both + [True] * only_a + [False] * only_b + [False] * neither)
    b = np.array([True] * both + [False] * only_a + [True] * only_b + [False] * neither)
    return a, b


def test_exact_binomial_p_value_by_hand():
    # b=1, c=9: two-sided binomial, p = 2 * P(X <= 1 | n=10, 1/2) = 2 * 11 / 1024
    r = mcnemar_test(*outcomes(50, 1, 9, 40))
    assert (r["b"], r["c"], r["exact"], r["n"]) == (1, 9, True, 100)
    assert r["p_value"] == pytest.approx(22 / 1024)


def test_chi_square_with_continuity_correction_by_hand():
    # Agresti's approval-rating table [[794, 150], [86, 570]]:
    # (|150 - 86| - 1)^2 / (150 + 86) = 3969 / 236 = 16.818, p = 4.1e-5
    r = mcnemar_test(*outcomes(794, 150, 86, 570))
    assert r["exact"] is False
    assert r["statistic"] == pytest.approx(3969 / 236)
    assert r["p_value"] == pytest.approx(4.115e-5, rel=1e-3)


def test_exact_switches_at_25_discordant():
    assert mcnemar_test(*outcomes(10, 12, 12, 10))["exact"] is True
    assert mcnemar_test(*outcomes(10, 12, 13, 10))["exact"] is False


def test_pairs_are_matched_on_path_not_row_order():
    a = synthetic_predictions(80, seed=1)
    b = synthetic_predictions(80, seed=2)
    shuffled = b.sample(frac=1.0, random_state=0)
    assert mcnemar_frames({"a": a, "b": b}) == mcnemar_frames({"a": a, "b": shuffled})


def test_different_test_sets_are_refused():
    a = synthetic_predictions(50, seed=1)
    b = synthetic_predictions(50, seed=2).iloc[:-1]
    with pytest.raises(TriptychError, match="not evaluated on the same test images.*1 only in a"):
        mcnemar_frames({"a": a, "b": b})


def test_disagreeing_true_labels_are_refused():
    a = synthetic_predictions(30, seed=1)
    b = a.copy()
    b.loc[0, "y_true"] = next(c for c in ["Romanticism", "Expressionism"] if c != a.loc[0, "y_true"])
    with pytest.raises(TriptychError, match="disagree on the true class of 1 image"):
        mcnemar_frames({"a": a, "b": b})


def test_duplicate_paths_are_refused():
    a = synthetic_predictions(30, seed=1)
    dup = pd.concat([a, a.iloc[:1]])
    with pytest.raises(TriptychError, match="more than once"):
        mcnemar_frames({"a": a, "dup": dup})


def test_pairwise_on_run_dirs(tmp_path):
    runs = [
        write_synthetic_run(tmp_path, "r50", model="resnet50", skill=1.0, seed=1, evaluate=False),
        write_synthetic_run(tmp_path, "xcp", model="xception", skill=2.5, seed=2, evaluate=False),
        write_synthetic_run(tmp_path, "xcp2", model="xception", skill=2.5, seed=3, evaluate=False),
    ]
    results = mcnemar_pairwise([r.root for r in runs])
    assert [(r["model_a"], r["model_b"]) for r in results] == [
        ("resnet50", "xception (xcp)"), ("resnet50", "xception (xcp2)"), ("xception (xcp)", "xception (xcp2)")]
    first = results[0]
    assert first["experiment_a"] == "r50" and first["c"] > first["b"] and first["p_value"] < 0.05
    assert set(first) >= {"n", "b", "c", "statistic", "p_value", "exact"}


def test_missing_predictions_in_a_run_is_named(tmp_path):
    ok = write_synthetic_run(tmp_path, "ok", evaluate=False)
    running = write_synthetic_run(tmp_path, "busy", status="running")
    with pytest.raises(TriptychError, match="busy.*predictions.csv"):
        mcnemar_pairwise([ok.root, running.root])


def test_display_names_disambiguate_shared_models():
    assert display_names({"e1": "m", "e2": "m", "e3": "n"}) == {"e1": "m (e1)", "e2": "m (e2)", "e3": "n"}
