"""Test-set metrics of one run, computed from its ``predictions.csv`` and saved as ``metrics.json``.

Numbers come from scikit-learn (classification report, confusion matrix, top-k accuracy,
ROC / PR), SciPy (calibration bins) and a vectorised bootstrap for the confidence intervals.
Undefined values are ``None`` (JSON ``null``) with a note in ``notes`` saying why, never NaN and
never a silently substituted number.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, classification_report, confusion_matrix, top_k_accuracy_score

from triptych.errors import TriptychError
from triptych.evaluation.bootstrap import bootstrap_cis
from triptych.evaluation.calibration import calibration_summary
from triptych.evaluation.curves import pr_summary, roc_summary
from triptych.evaluation.predictions import Predictions, read_predictions_csv, validate_predictions
from triptych.io import atomic_write_json
from triptych.rundir import RunDir

TOP_K = (2, 5)
# Keys that come from the trainer (via ``extra``) and survive a re-evaluation of the run.
CARRIED_KEYS = ("model", "params", "train_seconds")
# Row sums further than this from 1 mean the prob_ columns are not a softmax output.
_SUM_TOLERANCE = 1e-3


def compute_metrics(
    predictions: pd.DataFrame,
    class_names: list[str] | None = None,
    *,
    seed: int = 0,
    n_resamples: int = 1000,
) -> dict[str, Any]:
    """All test metrics of one predictions table as a JSON-serialisable dict.

    ``class_names`` defaults to the order of the ``prob_<class>`` columns. Raises
    :class:`TriptychError` for missing columns, unknown labels or NaN probabilities.

    Keys: ``class_names``, ``n_test``, ``accuracy``, ``balanced_accuracy`` (mean recall over the
    classes in the test set), ``macro_f1``, ``weighted_f1``, ``macro_auc``, ``ece``;
    ``accuracy_ci95``, ``balanced_accuracy_ci95``, ``macro_f1_ci95``, ``macro_auc_ci95`` (``[lo, hi]`` or None);
    ``top_k_accuracy`` (``{"2": .., "5": ..}`` for k < number of classes), ``per_class``
    (``{cls: {precision, recall, f1, support}}``), ``classification_report`` (sklearn's
    ``output_dict``), ``confusion_matrix`` (counts, rows = true class),
    ``confusion_matrix_normalized`` (row-normalised), ``roc_auc`` (``per_class``, ``micro``,
    ``macro``, ``macro_classes``, ``macro_partial``, ``undefined`` reasons),
    ``average_precision``, ``calibration`` (ECE and reliability bins), ``bootstrap`` (settings),
    ``notes`` and the curve points ``roc_curves`` / ``pr_curves``.
    """
    p = validate_predictions(predictions, class_names)
    report, per_class, notes = _classification(p)
    roc_auc, roc_curves, roc_notes = roc_summary(p)
    average_precision, pr_curves = pr_summary(p)
    calibration = calibration_summary(p)
    auc_classes = [p.class_names.index(c) for c in roc_auc["macro_classes"]]
    cis = bootstrap_cis(p, auc_classes, seed=seed, n_resamples=n_resamples)
    metrics: dict[str, Any] = {
        "class_names": p.class_names,
        "n_test": p.n,
        "accuracy": report["accuracy"],
        "accuracy_ci95": cis["accuracy_ci95"],
        "balanced_accuracy": _balanced_accuracy(p),
        "balanced_accuracy_ci95": cis["balanced_accuracy_ci95"],
        "macro_f1": report["macro avg"]["f1-score"],
        "macro_f1_ci95": cis["macro_f1_ci95"],
        "weighted_f1": report["weighted avg"]["f1-score"],
        "macro_auc": roc_auc["macro"],
        "macro_auc_ci95": cis["macro_auc_ci95"],
        "ece": calibration["ece"],
        "top_k_accuracy": _top_k(p),
        "per_class": per_class,
        "classification_report": report,
        "confusion_matrix": confusion_matrix(p.y_true, p.y_pred, labels=range(len(p.class_names))).tolist(),
        "confusion_matrix_normalized": _row_normalized(p),
        "roc_auc": roc_auc,
        "average_precision": average_precision,
        "calibration": calibration,
        "bootstrap": cis["bootstrap"],
        "notes": notes + roc_notes + _probability_notes(p),
        "roc_curves": roc_curves,
        "pr_curves": pr_curves,
    }
    return to_json_safe(metrics)


def evaluate_run(run_dir: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compute :func:`run_metrics` and write them to ``run_dir/metrics.json`` atomically."""
    metrics = run_metrics(run_dir, extra)
    atomic_write_json(RunDir(Path(run_dir)).metrics, metrics)
    return metrics


def run_metrics(run_dir: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metrics of ``run_dir/predictions.csv``, as ``metrics.json`` holds them (nothing written).

    ``extra`` (from the trainer: ``model``, ``params``, ``train_seconds``, ...) is merged in;
    ``model``, ``params`` and ``train_seconds`` missing from it are kept from an existing
    metrics.json, else ``model`` falls back to the run record / directory name and the others to None.
    ``extra["class_names"]``, if given, fixes the class order.
    """
    run = RunDir(Path(run_dir))
    extra = dict(extra or {})
    class_names = extra.pop("class_names", None)
    computed = compute_metrics(read_predictions_csv(run.predictions), class_names)
    clash = sorted(set(extra) & set(computed))
    if clash:
        raise ValueError(f"evaluate_run: extra must not override computed metrics {clash}")
    carried = _carried_fields(run, extra)
    metrics = {**carried, "experiment": run.name, **computed, **extra}
    # Keep the large curve arrays at the end so the file reads well from the top.
    for key in ("roc_curves", "pr_curves"):
        metrics[key] = metrics.pop(key)
    return to_json_safe(metrics)


def _carried_fields(run: RunDir, extra: dict[str, Any]) -> dict[str, Any]:
    previous = _read_json(run.metrics)
    carried = {key: extra.pop(key, previous.get(key)) for key in CARRIED_KEYS}
    if carried["model"] is None:
        record = run.read_record()
        carried["model"] = (record.model if record else None) or run.name
    return carried


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TriptychError(f"{path}: not valid JSON ({err})") from err
    return data if isinstance(data, dict) else {}


def _classification(p: Predictions) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    labels = list(range(len(p.class_names)))
    # zero_division=nan: a precision over zero predictions is undefined, not 0 or 1; sklearn then
    # leaves it out of the macro / weighted averages, and we say so in the notes.
    raw = classification_report(
        p.y_true, p.y_pred, labels=labels, target_names=p.class_names, output_dict=True, zero_division=np.nan
    )
    report = {k: (_report_row(row) if isinstance(row, dict) else _number(row)) for k, row in raw.items()}
    per_class = {
        c: {"precision": report[c]["precision"], "recall": report[c]["recall"], "f1": report[c]["f1-score"],
            "support": int(report[c]["support"])}
        for c in p.class_names
    }
    notes = []
    for c, row in per_class.items():
        if row["precision"] is None and row["support"] > 0:
            notes.append(f"precision undefined for {c}: the model never predicted it (left out of the precision averages)")
        if row["support"] == 0:
            notes.append(f"no test example of class {c}: its recall, ROC AUC and average precision are undefined")
    return report, per_class, notes


def _balanced_accuracy(p: Predictions) -> float:
    # sklearn warns when a predicted class has no test example; it is left out, as the docstring says.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(p.y_true, p.y_pred))


def _top_k(p: Predictions) -> dict[str, float]:
    k_classes = len(p.class_names)
    return {
        str(k): float(top_k_accuracy_score(p.y_true, p.probs, k=k, labels=range(k_classes)))
        for k in TOP_K
        if k_classes > k
    }


def _row_normalized(p: Predictions) -> list[list[float | None]]:
    counts = confusion_matrix(p.y_true, p.y_pred, labels=range(len(p.class_names)))
    normalized = confusion_matrix(p.y_true, p.y_pred, labels=range(len(p.class_names)), normalize="true")
    # sklearn writes 0 for a class with no test example; its row has no rate at all.
    return [row.tolist() if total else [None] * len(row) for row, total in zip(normalized, counts.sum(axis=1))]


def _probability_notes(p: Predictions) -> list[str]:
    sums = p.probs.sum(axis=1)
    off = np.abs(sums - 1) > _SUM_TOLERANCE
    notes = []
    if off.any():
        notes.append(f"probabilities of {int(off.sum())} row(s) do not sum to 1 (e.g. {sums[off][0]:.4f}); "
                     "calibration and AUC treat them as scores")
    disagree = int((p.probs.argmax(axis=1) != p.y_pred).sum())
    if disagree:
        notes.append(f"y_pred differs from the arg-max probability in {disagree} row(s) (ties or thresholding)")
    return notes


def _report_row(row: dict[str, Any]) -> dict[str, Any]:
    return {m: int(v) if m == "support" else _number(v) for m, v in row.items()}


def _number(value: Any) -> Any:
    value = float(value)
    return None if math.isnan(value) else value


def to_json_safe(obj: Any) -> Any:
    """Plain Python types, with NaN / inf turned into None so the JSON stays strict."""
    if isinstance(obj, dict):
        return {str(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json_safe(obj.tolist())
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj
