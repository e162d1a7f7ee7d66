"""Finding and reading saved run directories for the report and ``comparison.json`` (read only).

Only runs whose record says ``done`` are read as finished; the rest are listed as running or
failed (with the reason). A finished run without ``metrics.json`` (or with one older than its
``predictions.csv``) gets its metrics computed from ``predictions.csv`` in memory: a report
never writes into a run directory. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from triptych.errors import TriptychError
from triptych.evaluation.compare import display_names
from triptych.evaluation.metrics import run_metrics
from triptych.rundir import STATUS_DONE, RunDir, RunRecord, experiment_dirs

PROFILE_FILE = "profile.json"
# metrics.json keys the report draws from; an older file without them is recomputed.
REQUIRED_METRICS = ("class_names", "accuracy", "per_class", "confusion_matrix", "roc_auc", "roc_curves", "calibration")


@dataclass
class EmbeddedFigure:
    """A rendered figure as the report shows it."""

    caption: str
    data_uri: str
    wide: bool = False  # wider than tall: the report gives it a whole row


@dataclass
class RunView:
    """Everything the report shows about one experiment."""

    run: RunDir
    label: str = ""
    record: RunRecord | None = None
    metrics: dict[str, Any] | None = None
    history: pd.DataFrame | None = None
    profile: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    # filled in by the report for finished runs
    figures: list[EmbeddedFigure] = field(default_factory=list)
    diagrams: list[EmbeddedFigure] = field(default_factory=list)
    gradcam: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        return self.record.status if self.record else "unknown"

    @property
    def reason(self) -> str | None:
        return self.record.reason if self.record else None

    @property
    def model(self) -> str | None:
        return self.record.model if self.record else None

    @property
    def finished(self) -> bool:
        return self.status == STATUS_DONE and self.metrics is not None

    @property
    def anchor(self) -> str:
        return "run-" + "".join(ch if ch.isalnum() else "-" for ch in self.run.name)


def load_views(paths: Iterable[str | Path]) -> list[RunView]:
    """The runs under ``paths`` (see :func:`resolve_runs`), loaded and labelled."""
    views = [load_run(run) for run in resolve_runs(paths)]
    labels = display_names({v.run.name: v.model or v.run.name for v in views})
    for view in views:
        view.label = labels[view.run.name]
    return views


def resolve_runs(paths: Iterable[str | Path]) -> list[RunDir]:
    """Experiment dirs for each path: the path itself if it has a manifest, else its experiment subdirs."""
    runs: dict[Path, RunDir] = {}
    for path in map(Path, paths):
        if not path.is_dir():
            raise TriptychError(f"{path}: not a directory")
        found = [RunDir(path)] if (path / "manifest.json").is_file() else experiment_dirs(path)
        if not found:
            raise TriptychError(f"{path}: not a run directory (no manifest.json) and has no experiment subdirectories")
        runs.update((r.root.resolve(), r) for r in found)
    if not runs:
        raise TriptychError("no run directories given")
    names = [r.name for r in runs.values()]
    if len(set(names)) != len(names):
        raise TriptychError(f"two run directories share an experiment name ({sorted(names)}); report them separately")
    return list(runs.values())


def load_run(run: RunDir) -> RunView:
    view = RunView(run=run)
    try:
        view.record = run.read_record()
    except TriptychError as err:
        view.problems.append(f"manifest.json unreadable: {err}")
    view.history = _read_history(view)
    if view.status == STATUS_DONE:
        view.metrics = _load_metrics(view)
        view.profile, problem = read_profile(run)
        if problem:
            view.problems.append(problem)
    return view


def read_profile(run: RunDir) -> tuple[dict[str, Any] | None, str | None]:
    """``profile.json`` of a run, and a problem sentence when it exists but cannot be read."""
    path = run.root / PROFILE_FILE
    if not path.is_file():
        return None, None
    try:
        profile = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError, UnicodeDecodeError) as err:
        return None, f"{PROFILE_FILE} unreadable: {err}"
    if not isinstance(profile, dict):
        return None, f"{PROFILE_FILE} is not a JSON object"
    return profile, None


def _read_history(view: RunView) -> pd.DataFrame | None:
    if not view.run.history.is_file():
        if view.status == STATUS_DONE:
            view.problems.append("history.csv missing: no training curves")
        return None
    try:
        history = pd.read_csv(view.run.history)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        view.problems.append(f"history.csv unreadable: {err}")
        return None
    if "epoch" not in history:
        history.insert(0, "epoch", range(1, len(history) + 1))
    return history


def _load_metrics(view: RunView) -> dict[str, Any] | None:
    """metrics.json, or computed from predictions.csv when missing, stale or incomplete."""
    metrics = _read_metrics_json(view)
    if _needs_evaluation(view.run, metrics):
        try:
            metrics = run_metrics(view.run.root, _trainer_fields(view.record))
        except TriptychError as err:
            view.problems.append(f"cannot evaluate: {err}")
            return None
    if metrics is None:
        if not view.problems:
            view.problems.append("finished, but neither metrics.json nor predictions.csv exists")
        return None
    missing = [key for key in REQUIRED_METRICS if key not in metrics]
    if missing:
        view.problems.append(f"metrics.json lacks {', '.join(missing)} and there is no predictions.csv to recompute it")
        return None
    return metrics


def _read_metrics_json(view: RunView) -> dict[str, Any] | None:
    if not view.run.metrics.is_file():
        return None
    try:
        metrics = json.loads(view.run.metrics.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        if not view.run.predictions.is_file():
            view.problems.append(f"metrics.json is not valid JSON ({err}) and there is no predictions.csv")
        return None
    return metrics if isinstance(metrics, dict) else None


def _needs_evaluation(run: RunDir, metrics: dict[str, Any] | None) -> bool:
    if not run.predictions.is_file():
        return False
    if metrics is None or any(key not in metrics for key in REQUIRED_METRICS):
        return True
    # predictions.csv rewritten after metrics.json: the saved numbers are stale.
    return run.predictions.stat().st_mtime > run.metrics.stat().st_mtime


def _trainer_fields(record: RunRecord | None) -> dict[str, Any]:
    """What the runner passed to the evaluation, as far as the record has it."""
    if record is None:
        return {}
    fields = {"model": record.model, "train_seconds": record.train_seconds}
    return {key: value for key, value in fields.items() if value is not None}
