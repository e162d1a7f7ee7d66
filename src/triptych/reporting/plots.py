"""Every figure of the project: training curves, confusion matrix, ROC / PR curves, reliability
diagram, per-class F1, and the cross-model comparison figures.

Figures are built with matplotlib's object-oriented API on an explicit Agg canvas (no pyplot):
no global backend switch, no display needed, and no figure kept alive in pyplot's registry.
Each ``plot_*`` function returns a :class:`~matplotlib.figure.Figure`; :func:`render` turns it
into PNG and SVG bytes and :func:`save_figure` writes both atomically. Text is saved with
``bbox_inches="tight"`` so no rotated class name or legend is clipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from triptych.io import atomic_write_bytes

PNG_DPI = 110
_NA_TEXT = "n/a"


@dataclass(frozen=True)
class Rendered:
    """One figure as PNG and SVG bytes."""

    png: bytes
    svg: bytes


def new_figure(width: float = 6.4, height: float = 4.4, **subplots: Any) -> tuple[Figure, Any]:
    """A figure on an Agg canvas and its axes (``subplots`` as for ``Figure.subplots``)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(**subplots)


def render(fig: Figure, dpi: int = PNG_DPI) -> Rendered:
    """PNG and SVG bytes of ``fig``, cropped to their content (nothing clipped)."""
    out = {}
    # SVG text stays <text> (searchable, editable, faster to write) instead of glyph outlines.
    with rc_context({"svg.fonttype": "none"}):
        for fmt in ("png", "svg"):
            buffer = BytesIO()
            # metadata Date=None keeps the SVG byte-identical across runs of the same data.
            metadata = {"Date": None} if fmt == "svg" else None
            fig.savefig(buffer, format=fmt, dpi=dpi, bbox_inches="tight", metadata=metadata)
            out[fmt] = buffer.getvalue()
    return Rendered(png=out["png"], svg=out["svg"])


def save_figure(fig: Figure | Rendered, stem: str | Path) -> dict[str, Path]:
    """Write ``stem.png`` and ``stem.svg`` atomically; return their paths."""
    rendered = fig if isinstance(fig, Rendered) else render(fig)
    stem = Path(stem)
    return {
        "png": atomic_write_bytes(stem.with_suffix(".png"), rendered.png),
        "svg": atomic_write_bytes(stem.with_suffix(".svg"), rendered.svg),
    }


# --- training curves -----------------------------------------------------------------------


def plot_accuracy_curves(history: pd.DataFrame, title: str = "Accuracy") -> Figure:
    """Train and validation accuracy per epoch, with phase boundaries marked."""
    return _history_figure(history, ("accuracy", "val_accuracy"), "accuracy", title)


def plot_loss_curves(history: pd.DataFrame, title: str = "Loss") -> Figure:
    """Train and validation loss per epoch, with phase boundaries marked."""
    return _history_figure(history, ("loss", "val_loss"), "loss", title)


def _history_figure(history: pd.DataFrame, columns: tuple[str, str], ylabel: str, title: str) -> Figure:
    fig, ax = new_figure(5.6, 3.9)
    labels = {columns[0]: "train", columns[1]: "validation"}
    plotted = False
    for column in columns:
        if column in history and history[column].notna().any():
            ax.plot(history["epoch"], history[column], marker="o", label=labels[column])
            plotted = True
    if not plotted:
        _no_data(ax, f"history.csv has no {ylabel} columns")
    mark_phases(ax, history)
    ax.set(title=title, xlabel="epoch", ylabel=ylabel)
    _integer_epochs(ax)
    ax.grid(alpha=0.3)
    if plotted:
        ax.legend(loc="best")
    return fig


def phase_boundaries(history: pd.DataFrame) -> list[tuple[float, str]]:
    """``(x, new phase)`` halfway between the last epoch of a phase and the first of the next."""
    if "phase" not in history or len(history) < 2:
        return []
    phase = history["phase"].astype(str).to_numpy()
    epoch = history["epoch"].to_numpy(dtype=float)
    changes = np.flatnonzero(phase[1:] != phase[:-1]) + 1
    return [((epoch[i - 1] + epoch[i]) / 2, phase[i]) for i in changes]


def mark_phases(ax: Axes, history: pd.DataFrame) -> None:
    """Vertical dashed line at each phase change, labelled with the phase that starts there."""
    for x, label in phase_boundaries(history):
        ax.axvline(x, color="0.35", linestyle="--", linewidth=1.2)
        # x in data coordinates, y in axes coordinates: the label sits at the top of the plot.
        ax.text(x, 0.98, f" {label}", transform=ax.get_xaxis_transform(), ha="left", va="top",
                fontsize=10, color="0.25")


def _integer_epochs(ax: Axes) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


# --- classification --------------------------------------------------------------------------


def plot_confusion_matrix(counts: list[list[int]], class_names: list[str], title: str = "Confusion matrix") -> Figure:
    """Heat map coloured by row-normalised rate; each cell shows its count and row percentage."""
    counts_arr = np.asarray(counts, dtype=float)
    k = len(class_names)
    totals = counts_arr.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(totals > 0, counts_arr / totals, np.nan)
    size = max(4.8, 0.75 * k + 2.5)
    fig, ax = new_figure(size + 1.0, size)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fontsize = max(6, 11 - k // 3)
    for i in range(k):
        for j in range(k):
            pct = _NA_TEXT if np.isnan(rates[i, j]) else f"{100 * rates[i, j]:.1f}%"
            color = "white" if rates[i, j] > 0.55 else "black"
            ax.text(j, i, f"{int(counts_arr[i, j])}\n({pct})", ha="center", va="center", color=color, fontsize=fontsize)
    ax.set_xticks(range(k), labels=class_names, rotation=35, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), labels=class_names)
    ax.set(title=title, xlabel="predicted class", ylabel="true class")
    fig.colorbar(image, ax=ax, label="fraction of the true class (row)", shrink=0.8)
    return fig


def plot_per_class_f1(per_class: Mapping[str, Mapping[str, Any]], title: str = "F1 per class") -> Figure:
    """Horizontal bars (long class names stay readable) with the value at the end of each bar."""
    names = list(per_class)
    values = [per_class[n].get("f1") for n in names]
    fig, ax = new_figure(5.6, max(2.6, 0.45 * len(names) + 1.4))
    y = np.arange(len(names))
    ax.barh(y, [v if v is not None else 0 for v in values], color="tab:blue")
    for yi, v in zip(y, values):
        ax.text((v or 0) + 0.01, yi, f"{v:.3f}" if v is not None else _NA_TEXT, va="center", fontsize=9)
    ax.set_yticks(y, labels=names)
    ax.invert_yaxis()  # first class on top, as in the tables
    ax.set(title=title, xlabel="F1 score", xlim=(0, 1.12))
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_roc_curves(metrics: Mapping[str, Any], title: str = "ROC curves (one-vs-rest)") -> Figure:
    """Per-class ROC with AUC in the legend, plus micro and macro averages."""
    fig, ax = new_figure(5.6, 5.2)
    curves, aucs = metrics.get("roc_curves", {}), metrics.get("roc_auc", {})
    for name in metrics["class_names"]:
        if name in curves:
            ax.plot(curves[name]["fpr"], curves[name]["tpr"], label=f"{name} (AUC = {aucs['per_class'][name]:.3f})")
        else:
            ax.plot([], [], " ", label=f"{name} (AUC {_NA_TEXT}: no positives or no negatives)")
    for key, style in (("micro", ":"), ("macro", "--")):
        if key in curves:
            auc = aucs.get(key)
            auc_text = f"{auc:.3f}" if auc is not None else _NA_TEXT
            ax.plot(curves[key]["fpr"], curves[key]["tpr"], linestyle=style, linewidth=2.2, color="black" if key == "macro" else "0.45",
                    label=f"{key}-average (AUC = {auc_text})")
    _chance_diagonal(ax)
    ax.set(title=title, xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=9)
    return fig


def plot_pr_curves(metrics: Mapping[str, Any], title: str = "Precision-recall curves") -> Figure:
    """Per-class precision-recall curves with average precision in the legend."""
    fig, ax = new_figure(5.6, 4.6)
    curves, ap = metrics.get("pr_curves", {}), metrics.get("average_precision", {}).get("per_class", {})
    for name in metrics["class_names"]:
        if name in curves:
            ax.plot(curves[name]["recall"], curves[name]["precision"], label=f"{name} (AP = {ap[name]:.3f})")
        else:
            ax.plot([], [], " ", label=f"{name} (AP {_NA_TEXT}: no positives)")
    ax.set(title=title, xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=9)
    return fig


def plot_reliability_diagram(calibration: Mapping[str, Any], title: str = "Reliability diagram") -> Figure:
    """Accuracy per confidence bin against the diagonal, with the sample count per bin below."""
    fig, (ax, ax_count) = new_figure(5.6, 5.2, nrows=2, sharex=True, height_ratios=[3, 1])
    bins = calibration["bins"]
    lower = np.array([b["lower"] for b in bins])
    width = np.array([b["upper"] - b["lower"] for b in bins])
    filled = [b["count"] > 0 for b in bins]
    filled = np.array(filled)
    acc = np.array([b["accuracy"] if f else 0.0 for b, f in zip(bins, filled)])
    conf = np.array([b["confidence"] if f else 0.0 for b, f in zip(bins, filled)])
    ax.bar(lower, acc, width=width, align="edge", color="tab:blue", alpha=0.85, edgecolor="white", label="accuracy")
    # Mean confidence as a red tick per bin: its distance to the bar top is what ECE averages.
    ax.hlines(conf[filled], lower[filled], (lower + width)[filled], colors="tab:red", linewidth=2.5,
              label="mean confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.3", label="perfect calibration")
    ax.set(title=f"{title} (ECE = {calibration['ece']:.3f}, {calibration['n_bins']} bins)",
           ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=9)
    ax_count.bar(lower, [b["count"] for b in bins], width=width, align="edge", color="0.5", edgecolor="white")
    ax_count.set(xlabel="confidence (top-1 probability)", ylabel="images")
    return fig


# --- comparison ------------------------------------------------------------------------------


def plot_roc_comparison(metrics_by_model: Mapping[str, Mapping[str, Any]], title: str = "Macro-average ROC, all models") -> Figure:
    """Every model's macro-average ROC curve in one figure."""
    fig, ax = new_figure(5.6, 5.2)
    for name, metrics in metrics_by_model.items():
        curve = metrics.get("roc_curves", {}).get("macro")
        auc = metrics.get("roc_auc", {}).get("macro")
        if curve is None:
            ax.plot([], [], " ", label=f"{name} (macro AUC {_NA_TEXT})")
            continue
        ax.plot(curve["fpr"], curve["tpr"], linewidth=2, label=f"{name} (macro AUC = {auc:.3f})")
    _chance_diagonal(ax)
    ax.set(title=title, xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=9)
    return fig


def plot_val_accuracy_comparison(histories: Mapping[str, pd.DataFrame], title: str = "Validation accuracy, all models") -> Figure:
    """Every model's validation accuracy per epoch in one figure."""
    fig, ax = new_figure(5.6, 4.4)
    plotted = False
    for name, history in histories.items():
        if "val_accuracy" in history and history["val_accuracy"].notna().any():
            ax.plot(history["epoch"], history["val_accuracy"], marker="o", label=name)
            plotted = True
    if plotted:
        ax.legend(loc="best", fontsize=9)
    else:
        _no_data(ax, "no model has a validation accuracy history")
    ax.set(title=title, xlabel="epoch", ylabel="validation accuracy")
    _integer_epochs(ax)
    ax.grid(alpha=0.3)
    return fig


def _chance_diagonal(ax: Axes) -> None:
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="-", linewidth=0.8, label="chance")
    ax.grid(alpha=0.3)


def _no_data(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color="0.4")


# --- one run ---------------------------------------------------------------------------------

# File stem and caption of each per-run figure, in report order.
RUN_FIGURES = {
    "accuracy": "Accuracy per epoch",
    "loss": "Loss per epoch",
    "confusion_matrix": "Confusion matrix",
    "roc": "ROC curves",
    "precision_recall": "Precision-recall curves",
    "reliability": "Reliability diagram",
    "per_class_f1": "F1 per class",
}


def run_figures(metrics: Mapping[str, Any] | None, history: pd.DataFrame | None, label: str) -> dict[str, Figure]:
    """The figures of one run that its saved files allow (history and / or metrics)."""
    figures: dict[str, Figure] = {}
    if history is not None:
        figures["accuracy"] = plot_accuracy_curves(history, f"{label}: accuracy")
        figures["loss"] = plot_loss_curves(history, f"{label}: loss")
    if metrics is not None:
        figures["confusion_matrix"] = plot_confusion_matrix(
            metrics["confusion_matrix"], metrics["class_names"], f"{label}: confusion matrix (test)")
        figures["roc"] = plot_roc_curves(metrics, f"{label}: ROC curves (one-vs-rest, test)")
        figures["precision_recall"] = plot_pr_curves(metrics, f"{label}: precision-recall (test)")
        figures["reliability"] = plot_reliability_diagram(metrics["calibration"], f"{label}: reliability")
        figures["per_class_f1"] = plot_per_class_f1(metrics["per_class"], f"{label}: F1 per class (test)")
    return figures
