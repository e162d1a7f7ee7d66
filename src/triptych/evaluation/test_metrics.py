"""Metrics: hand-computed cases, a full recomputation with scikit-learn, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)

from triptych.errors import TriptychError
from triptych.evaluation import compute_metrics, evaluate_run
from tests.fixtures.synthetic_runs import ART_CLASSES, synthetic_predictions, synthetic_record
from triptych.rundir import RunDir

CLASSES = ["a", "b", "c"]


def frame(y_true: list[str], probs: list[list[float]], y_pred: list[str] | None = None, classes=CLASSES) -> pd.DataFrame:
    probs_arr = np.asarray(probs, dtype=float)
    if y_pred is None:
        y_pred = [classes[i] for i in probs_arr.argmax(axis=1)]
    data = {"path": [f"img{i}.jpg" for i in range(len(y_true))], "y_true": y_true, "y_pred": y_pred}
    data.update({f"prob_{c}": probs_arr[:, i] for i, c in enumerate(classes)})
    return pd.DataFrame(data)


def small(metrics_kwargs=None, **kwargs):
    return compute_metrics(frame(**kwargs), n_resamples=200, **(metrics_kwargs or {}))


# --- hand-computed cases ---------------------------------------------------------------------


def test_perfect_classifier_has_auc_one_and_zero_ece():
    y = ["a", "b", "c"] * 4
    probs = [np.eye(3)[CLASSES.index(c)] for c in y]
    m = small(y_true=y, probs=probs)
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0
    assert m["roc_auc"]["per_class"] == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert m["roc_auc"]["micro"] == 1.0 and m["roc_auc"]["macro"] == 1.0
    assert m["ece"] == pytest.approx(0.0)
    assert m["accuracy_ci95"] == [1.0, 1.0]
    assert m["confusion_matrix"] == [[4, 0, 0], [0, 4, 0], [0, 0, 4]]


def test_constant_scores_have_auc_one_half():
    y = ["a", "b", "c", "a", "b", "c", "a"]
    m = small(y_true=y, probs=[[1 / 3] * 3] * len(y), y_pred=["a"] * len(y))
    assert m["roc_auc"]["per_class"] == pytest.approx({"a": 0.5, "b": 0.5, "c": 0.5})
    assert m["roc_auc"]["macro"] == pytest.approx(0.5)
    assert m["roc_auc"]["micro"] == pytest.approx(0.5)


def test_known_small_case_by_hand():
    # 4 images: two at confidence 0.9 (one right), two at 0.6 (both right).
    y = ["a", "b", "a", "a"]
    probs = [[0.9, 0.05, 0.05], [0.9, 0.07, 0.03], [0.6, 0.3, 0.1], [0.6, 0.3, 0.1]]
    m = small(y_true=y, probs=probs)
    assert m["accuracy"] == pytest.approx(0.75)
    # class a: tp 3, fp 1, fn 0 -> P 0.75, R 1, F1 6/7; class b: tp 0, fn 1, never predicted.
    assert m["per_class"]["a"] == pytest.approx({"precision": 0.75, "recall": 1.0, "f1": 6 / 7, "support": 3})
    assert m["per_class"]["b"]["precision"] is None  # 0/0: never predicted
    assert m["per_class"]["b"]["f1"] == 0.0 and m["per_class"]["b"]["recall"] == 0.0
    assert m["per_class"]["c"]["recall"] is None  # no test example
    # ECE: |0.5 - 0.9| * 2/4 + |1.0 - 0.6| * 2/4 = 0.4
    assert m["ece"] == pytest.approx(0.4)
    assert m["top_k_accuracy"] == {"2": 1.0}  # b is second for the wrong image
    assert any("precision undefined for b" in n for n in m["notes"])


def test_balanced_accuracy_by_hand():
    # a: 3 of 4 right, b: 1 of 1, c: no test example (left out) -> (0.75 + 1) / 2; accuracy 4/5.
    y = ["a", "a", "a", "a", "b"]
    m = small(y_true=y, probs=[[0.8, 0.1, 0.1]] * 3 + [[0.1, 0.1, 0.8], [0.1, 0.8, 0.1]])
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["balanced_accuracy"] == pytest.approx(0.875)


def test_top_k_only_when_more_classes_than_k():
    names = [f"c{i}" for i in range(6)]
    m = compute_metrics(synthetic_predictions(120, names, seed=3), n_resamples=100)
    assert set(m["top_k_accuracy"]) == {"2", "5"}
    assert set(small(y_true=["a", "b"], probs=[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])["top_k_accuracy"]) == {"2"}
    two = compute_metrics(synthetic_predictions(50, ["x", "y"]), n_resamples=100)
    assert two["top_k_accuracy"] == {}


# --- every number recomputed with scikit-learn ------------------------------------------------


def test_every_number_matches_sklearn(tmp_path):
    df = synthetic_predictions(240, ART_CLASSES, skill=1.5, seed=7)
    df.to_csv(tmp_path / "predictions.csv", index=False)
    metrics = evaluate_run(tmp_path, {"model": "m", "params": 5, "train_seconds": 1.5})
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))

    raw = pd.read_csv(tmp_path / "predictions.csv")
    classes = [c[len("prob_"):] for c in raw.columns if c.startswith("prob_")]
    y_true, y_pred = raw["y_true"].to_numpy(), raw["y_pred"].to_numpy()
    probs = raw[[f"prob_{c}" for c in classes]].to_numpy()
    onehot = (y_true[:, None] == np.asarray(classes)[None, :]).astype(int)
    y_idx = onehot.argmax(axis=1)

    assert saved["class_names"] == classes == ART_CLASSES
    assert saved["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert saved["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert saved["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert saved["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=classes)
    for i, c in enumerate(classes):
        assert saved["per_class"][c] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})
    report = classification_report(y_true, y_pred, labels=classes, output_dict=True)
    for key, row in report.items():  # key by key: pytest.approx does not nest
        assert saved["classification_report"][key] == pytest.approx(row)
    assert saved["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=classes).tolist()
    assert np.allclose(saved["confusion_matrix_normalized"], confusion_matrix(y_true, y_pred, labels=classes, normalize="true"))
    for i, c in enumerate(classes):
        assert saved["roc_auc"]["per_class"][c] == pytest.approx(roc_auc_score(onehot[:, i], probs[:, i]))
        assert saved["average_precision"]["per_class"][c] == pytest.approx(average_precision_score(onehot[:, i], probs[:, i]))
    assert saved["roc_auc"]["micro"] == pytest.approx(roc_auc_score(onehot, probs, average="micro"))
    assert saved["roc_auc"]["macro"] == pytest.approx(roc_auc_score(y_idx, probs, multi_class="ovr", average="macro"))
    assert saved["macro_auc"] == saved["roc_auc"]["macro"]
    assert saved["average_precision"]["micro"] == pytest.approx(average_precision_score(onehot, probs, average="micro"))
    assert saved["top_k_accuracy"]["2"] == pytest.approx(top_k_accuracy_score(y_idx, probs, k=2))
    assert saved["ece"] == pytest.approx(_ece_loop(probs, y_idx))
    assert saved["calibration"]["ece"] == saved["ece"]
    assert sum(b["count"] for b in saved["calibration"]["bins"]) == len(raw)
    assert saved["model"] == "m" and saved["params"] == 5 and saved["train_seconds"] == 1.5
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
        lo, hi = saved[f"{key}_ci95"]
        assert lo <= saved[key] <= hi


def _ece_loop(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    # Independent, deliberately plain implementation of ECE to cross-check the binned one.
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    ece = 0.0
    for i in range(n_bins):
        lo, hi = i / n_bins, (i + 1) / n_bins
        inside = (conf >= lo) & ((conf < hi) if i < n_bins - 1 else (conf <= hi))
        if inside.any():
            ece += inside.mean() * abs((pred[inside] == y[inside]).mean() - conf[inside].mean())
    return ece


def test_metrics_are_strict_json_and_deterministic():
    df = synthetic_predictions(100, seed=2)
    first, second = compute_metrics(df, n_resamples=300, seed=5), compute_metrics(df, n_resamples=300, seed=5)
    json.dumps(first, allow_nan=False)
    assert first == second


def test_class_names_argument_fixes_order():
    df = synthetic_predictions(60, ART_CLASSES)
    m = compute_metrics(df, list(reversed(ART_CLASSES)), n_resamples=100)
    assert m["class_names"] == list(reversed(ART_CLASSES))
    assert list(m["per_class"]) == list(reversed(ART_CLASSES))


# --- bad input -------------------------------------------------------------------------------


def test_missing_predictions_file_names_it(tmp_path):
    with pytest.raises(TriptychError, match=r"predictions\.csv"):
        evaluate_run(tmp_path)


def test_class_without_positive_example_has_null_auc_and_partial_macro():
    y = ["a", "b", "a", "b", "a", "b"]
    probs = [[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.4, 0.5, 0.1], [0.5, 0.4, 0.1], [0.3, 0.6, 0.1]]
    m = small(y_true=y, probs=probs)
    assert m["roc_auc"]["per_class"]["c"] is None
    assert m["roc_auc"]["macro_classes"] == ["a", "b"] and m["roc_auc"]["macro_partial"] is True
    assert m["macro_auc"] == pytest.approx(np.mean([m["roc_auc"]["per_class"]["a"], m["roc_auc"]["per_class"]["b"]]))
    assert "c" in m["roc_auc"]["undefined"]
    assert any("no test example of class c" in n for n in m["notes"])
    assert m["average_precision"]["per_class"]["c"] is None
    assert m["confusion_matrix_normalized"][2] == [None, None, None]


def test_single_class_test_set_gives_na_auc_without_crash():
    y = ["a"] * 5
    probs = [[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1], [0.9, 0.05, 0.05], [0.5, 0.25, 0.25]]
    m = small(y_true=y, probs=probs)
    assert m["roc_auc"]["per_class"] == {"a": None, "b": None, "c": None}
    assert m["roc_auc"]["micro"] is None and m["roc_auc"]["macro"] is None
    assert m["macro_auc"] is None and m["macro_auc_ci95"] is None
    assert m["accuracy"] == pytest.approx(0.8)
    json.dumps(m, allow_nan=False)


def test_nan_probabilities_are_refused_with_row_count():
    df = synthetic_predictions(30)
    df.loc[[3, 7], "prob_Expressionism"] = np.nan
    with pytest.raises(TriptychError, match=r"2 row\(s\) have NaN"):
        compute_metrics(df)


def test_missing_probability_column_is_named():
    df = synthetic_predictions(30).drop(columns=["prob_Romanticism"])
    with pytest.raises(TriptychError, match="prob_Romanticism"):
        compute_metrics(df, ART_CLASSES)
    with pytest.raises(TriptychError, match="y_true.*not a known class"):
        compute_metrics(df)  # inferred classes lack Romanticism, so its labels are unknown


def test_no_probability_columns_at_all():
    df = synthetic_predictions(10)[["path", "y_true", "y_pred"]]
    with pytest.raises(TriptychError, match="no prob_<class> columns"):
        compute_metrics(df)


def test_numeric_class_names_and_non_numeric_probabilities():
    df = frame(y_true=[0, 1, 1], probs=[[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], y_pred=[0, 1, 0], classes=["0", "1"])
    assert compute_metrics(df, n_resamples=50)["accuracy"] == pytest.approx(2 / 3)
    df["prob_0"] = ["0.8", "high", "0.6"]
    with pytest.raises(TriptychError, match="non-numeric"):
        compute_metrics(df)


def test_missing_label_column_and_empty_table():
    df = synthetic_predictions(10)
    with pytest.raises(TriptychError, match="missing column.*y_pred"):
        compute_metrics(df.drop(columns=["y_pred"]))
    with pytest.raises(TriptychError, match="no rows"):
        compute_metrics(df.iloc[:0])


# --- evaluate_run ----------------------------------------------------------------------------


def test_evaluate_run_keeps_trainer_fields_from_previous_metrics(tmp_path):
    synthetic_predictions(50).to_csv(tmp_path / "predictions.csv", index=False)
    evaluate_run(tmp_path, {"model": "xception", "params": 123, "train_seconds": 9.0})
    again = evaluate_run(tmp_path)
    assert (again["model"], again["params"], again["train_seconds"]) == ("xception", 123, 9.0)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_evaluate_run_without_trainer_fields_uses_null_and_the_record_model(tmp_path):
    synthetic_predictions(50).to_csv(tmp_path / "predictions.csv", index=False)
    RunDir(tmp_path).write_record(synthetic_record(tmp_path.name, "densenet121", "done"))
    m = evaluate_run(tmp_path)
    assert m["model"] == "densenet121" and m["params"] is None and m["train_seconds"] is None
    assert m["experiment"] == tmp_path.name


def test_evaluate_run_refuses_extra_that_overrides_a_metric(tmp_path):
    synthetic_predictions(20).to_csv(tmp_path / "predictions.csv", index=False)
    with pytest.raises(ValueError, match="accuracy"):
        evaluate_run(tmp_path, {"accuracy": 1.0})
