"""Plots: every figure renders to PNG and SVG, with the labels a reader needs."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from triptych.evaluation import compute_metrics
from tests.fixtures.synthetic_runs import ART_CLASSES, synthetic_history, synthetic_predictions
from triptych.reporting import plots


@pytest.fixture(scope="module")
def metrics():
    return compute_metrics(synthetic_predictions(200, seed=1), n_resamples=100)


def texts(fig) -> list[str]:
    found = [t.get_text() for ax in fig.axes for t in ax.texts]
    for ax in fig.axes:
        found += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        found += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
        legend = ax.get_legend()
        if legend:
            found += [t.get_text() for t in legend.get_texts()]
    return found


def test_phase_boundary_is_between_phases():
    history = synthetic_history(5, fine_tune_from=3)
    assert plots.phase_boundaries(history) == [(2.5, "fine-tune")]
    assert plots.phase_boundaries(history.drop(columns="phase")) == []


def test_training_curves_have_train_val_and_phase_line():
    fig = plots.plot_accuracy_curves(synthetic_history(5), "m: accuracy")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines[:2]] == ["train", "validation"]
    assert any(line.get_linestyle() == "--" for line in ax.lines)
    assert " fine-tune" in texts(fig) and "epoch" in texts(fig)
    loss = plots.plot_loss_curves(synthetic_history(5, fine_tune_from=None))
    assert "loss" in texts(loss) and not any(line.get_linestyle() == "--" for line in loss.axes[0].lines)


def test_confusion_matrix_shows_counts_percentages_and_class_names():
    fig = plots.plot_confusion_matrix([[8, 2, 0], [1, 9, 0], [0, 0, 0]], ART_CLASSES)
    labels = texts(fig)
    assert "8\n(80.0%)" in labels and "0\n(n/a)" in labels  # empty row: no rate
    assert all(c in labels for c in ART_CLASSES)
    assert "true class" in labels and "predicted class" in labels


def test_roc_legend_lists_classes_with_auc_and_averages(metrics):
    legend = texts(plots.plot_roc_curves(metrics))
    for c in ART_CLASSES:
        assert any(t.startswith(f"{c} (AUC = ") for t in legend)
    assert any(t.startswith("micro-average") for t in legend) and any(t.startswith("macro-average") for t in legend)


def test_roc_marks_undefined_class(metrics):
    broken = {**metrics, "roc_curves": {k: v for k, v in metrics["roc_curves"].items() if k != "Expressionism"}}
    assert any("Expressionism (AUC n/a" in t for t in texts(plots.plot_roc_curves(broken)))


def test_reliability_title_has_ece(metrics):
    fig = plots.plot_reliability_diagram(metrics["calibration"], "m")
    assert f"ECE = {metrics['ece']:.3f}" in fig.axes[0].get_title()


def test_every_figure_saves_png_and_svg(tmp_path, metrics):
    figures = plots.run_figures(metrics, synthetic_history(5), "resnet50")
    figures["cmp_roc"] = plots.plot_roc_comparison({"a": metrics, "b": metrics})
    figures["cmp_val"] = plots.plot_val_accuracy_comparison({"a": synthetic_history(5), "b": synthetic_history(4, seed=1)})
    assert set(plots.RUN_FIGURES) <= set(figures)
    for name, fig in figures.items():
        paths = plots.save_figure(fig, tmp_path / name)
        assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert ET.parse(paths["svg"]).getroot().tag.endswith("svg")
    svg = (tmp_path / "confusion_matrix.svg").read_text()
    assert all(f">{c}<" in svg for c in ART_CLASSES)  # class names are real, searchable text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_history_without_validation_and_figures_without_history(metrics):
    history = synthetic_history(3).drop(columns=["val_accuracy", "val_loss"])
    assert [line.get_label() for line in plots.plot_accuracy_curves(history).axes[0].lines][:1] == ["train"]
    assert "accuracy" not in plots.run_figures(metrics, None, "m")
    empty = plots.plot_val_accuracy_comparison({})
    assert "no model has a validation accuracy history" in texts(empty)
