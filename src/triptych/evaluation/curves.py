"""One-vs-rest ROC and precision-recall curves with their areas (scikit-learn underneath).

A class with no positive (or no negative) test example has no ROC curve: its AUC is reported as
``None`` with the reason, and the macro average is taken over the classes where it is defined and
flagged as partial, instead of a misleading 0.5 or a crash.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from triptych.evaluation.predictions import Predictions

# Curves go into metrics.json; 5 decimals is far below what a plot can show and keeps it small.
_DECIMALS = 5


def one_hot(p: Predictions) -> np.ndarray:
    """(n, k) 0/1 matrix of the true classes (also right for k == 2, unlike label_binarize)."""
    return np.eye(len(p.class_names), dtype=int)[p.y_true]


def undefined_reasons(p: Predictions) -> dict[str, str]:
    """Classes whose one-vs-rest ROC is undefined, with the reason a reader is shown."""
    counts = np.bincount(p.y_true, minlength=len(p.class_names))
    reasons = {}
    for name, count in zip(p.class_names, counts):
        if count == 0:
            reasons[name] = f"no test example of class {name}, so its ROC AUC is undefined"
        elif count == p.n:
            reasons[name] = f"every test example is {name} (no negatives), so its ROC AUC is undefined"
    return reasons


def roc_summary(p: Predictions) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """``(roc_auc, roc_curves, notes)`` for per-class, micro and macro one-vs-rest ROC."""
    y = one_hot(p)
    reasons = undefined_reasons(p)
    per_class: dict[str, float | None] = {}
    curves: dict[str, Any] = {}
    for i, name in enumerate(p.class_names):
        if name in reasons:
            per_class[name] = None
            continue
        fpr, tpr, _ = roc_curve(y[:, i], p.probs[:, i])
        per_class[name] = float(roc_auc_score(y[:, i], p.probs[:, i]))
        curves[name] = _curve(fpr=fpr, tpr=tpr)
    defined = [c for c in p.class_names if per_class[c] is not None]
    roc_auc: dict[str, Any] = {
        "per_class": per_class,
        "micro": None,
        # Unweighted mean of the per-class one-vs-rest AUCs = roc_auc_score(average="macro").
        "macro": float(np.mean([per_class[c] for c in defined])) if defined else None,
        "macro_classes": defined,
        "macro_partial": 0 < len(defined) < len(p.class_names),
        "undefined": dict(reasons),
    }
    # Classes with no test example are already explained by the classification notes.
    notes = [r for c, r in reasons.items() if (p.y_true == p.class_names.index(c)).any()]
    if len(np.unique(p.y_true)) >= 2:
        fpr, tpr, _ = roc_curve(y.ravel(), p.probs.ravel())
        roc_auc["micro"] = float(roc_auc_score(y, p.probs, average="micro"))
        curves["micro"] = _curve(fpr=fpr, tpr=tpr)
    else:
        # Micro AUC over one class only ranks "this class" against scores of absent classes,
        # which says nothing about discrimination; report it as undefined like the rest.
        roc_auc["undefined"]["micro"] = "the test set holds a single class, so ROC AUC is undefined"
        notes.append(roc_auc["undefined"]["micro"])
    if defined:
        curves["macro"] = _macro_curve([curves[c] for c in defined])
    if not defined:
        roc_auc["undefined"]["macro"] = "ROC AUC is undefined for every class"
    elif roc_auc["macro_partial"]:
        notes.append(f"macro ROC AUC averages only the {len(defined)} of {len(p.class_names)} classes where it is defined")
    return roc_auc, curves, notes


def pr_summary(p: Predictions) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(average_precision, pr_curves)``: per class, micro and macro (over defined classes)."""
    y = one_hot(p)
    per_class: dict[str, float | None] = {}
    curves: dict[str, Any] = {}
    for i, name in enumerate(p.class_names):
        if y[:, i].sum() == 0:  # no positives: precision-recall is undefined
            per_class[name] = None
            continue
        precision, recall, _ = precision_recall_curve(y[:, i], p.probs[:, i], drop_intermediate=True)
        per_class[name] = float(average_precision_score(y[:, i], p.probs[:, i]))
        curves[name] = _curve(precision=precision, recall=recall)
    defined = [v for v in per_class.values() if v is not None]
    summary = {
        "per_class": per_class,
        "micro": float(average_precision_score(y, p.probs, average="micro")),
        "macro": float(np.mean(defined)) if defined else None,
    }
    return summary, curves


def _macro_curve(curves: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    # The usual macro ROC curve (scikit-learn's example): mean TPR on the union of FPR points.
    grid = np.unique(np.concatenate([c["fpr"] for c in curves]))
    tpr = np.mean([np.interp(grid, c["fpr"], c["tpr"]) for c in curves], axis=0)
    return _curve(fpr=grid, tpr=tpr)


def _curve(**arrays: np.ndarray) -> dict[str, list[float]]:
    return {k: np.round(np.asarray(v, dtype=float), _DECIMALS).tolist() for k, v in arrays.items()}
