"""Figures and the HTML report, built from saved run directories (no TensorFlow, no retraining)."""

from triptych.reporting.report import FigureCache, build_report

__all__ = ["FigureCache", "build_report"]
