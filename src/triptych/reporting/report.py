"""Build one self-contained ``report.html`` from saved run directories, without retraining.

Only runs whose manifest says ``done`` are read as finished; the rest are listed as running or
failed (with the reason). A finished run without ``metrics.json`` (or with one older than its
``predictions.csv``) gets its metrics computed first. Figures are embedded as base64 PNG data
URIs and the CSS is inline, so the file opens anywhere with no network; the PNG and SVG files are
also saved under each run's ``plots/`` and, for the comparison figures, in ``<report name>_plots/``
beside the report.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from triptych import __version__
from triptych.errors import TriptychError
from triptych.evaluation.compare import display_names, mcnemar_pairwise
from triptych.evaluation.metrics import compute_metrics, evaluate_run
from triptych.evaluation.predictions import read_predictions_csv
from triptych.io import atomic_write_text
from triptych.reporting import format as fmt
from triptych.reporting.plots import (
    RUN_FIGURES,
    plot_roc_comparison,
    plot_val_accuracy_comparison,
    render,
    run_figures,
    save_figure,
)
from triptych.rundir import STATUS_DONE, STATUS_FAILED, STATUS_RUNNING, RunDir, experiment_dirs

TEMPLATES = Path(__file__).parent / "templates"
ALPHA = 0.05
CONFIG_EXCERPT_LINES = 30
# metrics.json keys the report draws from; an older file without them is recomputed.
REQUIRED_METRICS = ("class_names", "accuracy", "per_class", "confusion_matrix", "roc_auc", "roc_curves", "calibration")


@dataclass
class EmbeddedFigure:
    """A rendered figure as the report shows it."""

    caption: str
    data_uri: str


@dataclass
class RunView:
    """Everything the template shows about one experiment."""

    run: RunDir
    label: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)
    status: str = "unknown"
    reason: str | None = None
    metrics: dict[str, Any] | None = None
    history: pd.DataFrame | None = None
    figures: list[EmbeddedFigure] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status == STATUS_DONE and self.metrics is not None

    @property
    def anchor(self) -> str:
        return "run-" + "".join(ch if ch.isalnum() else "-" for ch in self.run.name)


def build_report(run_dirs: Iterable[str | Path], out: str | Path, title: str = "triptych report") -> Path:
    """Write ``out`` (one self-contained HTML file) for the given experiment or output dirs."""
    out = Path(out)
    views = [load_run(run) for run in resolve_runs(run_dirs)]
    labels = display_names({v.run.name: str(v.manifest.get("model") or v.run.name) for v in views})
    for view in views:
        view.label = labels[view.run.name]
        if view.finished:
            view.figures = _run_figures(view)
    finished = [v for v in views if v.finished]
    context = {
        "title": title,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
        "views": views,
        "finished": finished,
        "overview": [_overview_row(v) for v in views],
        "sections": [_section(v) for v in finished],
        "comparison": _comparison(finished, out.with_name(out.stem + "_plots")),
    }
    html = _environment().get_template("report.html.j2").render(**context)
    return atomic_write_text(out, html)


# --- finding and loading runs ------------------------------------------------------------------


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
        view.manifest = run.read_manifest()
    except (json.JSONDecodeError, OSError) as err:
        view.problems.append(f"manifest.json unreadable: {err}")
    view.status = str(view.manifest.get("status") or "unknown")
    view.reason = view.manifest.get("reason")
    view.history = _read_history(view)
    if view.status == STATUS_DONE:
        view.metrics = _load_metrics(view)
    return view


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
    """metrics.json, (re)computed from predictions.csv when missing, stale or incomplete."""
    metrics = _read_metrics_json(view)
    if _needs_evaluation(view.run, metrics):
        try:
            metrics = _evaluate(view)
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


def _evaluate(view: RunView) -> dict[str, Any]:
    extra = _extra_from_manifest(view.manifest)
    try:
        return evaluate_run(view.run.root, extra)
    except OSError as err:  # read-only run dir: compute for the report, save nothing
        view.problems.append(f"could not write metrics.json ({err.strerror}); computed for this report only")
        metrics = compute_metrics(read_predictions_csv(view.run.predictions))
        return {"model": extra.get("model"), "params": extra.get("params"), "train_seconds": extra.get("train_seconds"), **metrics}


def _needs_evaluation(run: RunDir, metrics: dict[str, Any] | None) -> bool:
    if not run.predictions.is_file():
        return False
    if metrics is None or any(key not in metrics for key in REQUIRED_METRICS):
        return True
    # predictions.csv rewritten after metrics.json: the saved numbers are stale.
    return run.predictions.stat().st_mtime > run.metrics.stat().st_mtime


def _extra_from_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: manifest[k] for k in ("model", "params", "train_seconds") if manifest.get(k) is not None}


def _run_figures(view: RunView) -> list[EmbeddedFigure]:
    figures = []
    for name, fig in run_figures(view.metrics, view.history, view.label).items():
        rendered = render(fig)
        try:
            save_figure(rendered, view.run.plots / name)
        except OSError as err:  # a read-only run dir still gets its report
            view.problems.append(f"could not save plots/{name}.png|svg: {err}")
        figures.append(EmbeddedFigure(RUN_FIGURES[name], _data_uri(rendered.png)))
    return figures


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --- view models -----------------------------------------------------------------------------


def _overview_row(view: RunView) -> dict[str, Any]:
    if view.finished:
        state, css = "done", "ok"
    elif view.status == STATUS_DONE:
        state, css = "done, but not readable", "bad"
    elif view.status == STATUS_RUNNING:
        state, css = "running", "warn"
    elif view.status == STATUS_FAILED:
        state, css = f"failed ({view.reason or 'no reason recorded'})", "bad"
    else:
        state, css = f"{view.status} (not finished)", "warn"
    return {"view": view, "state": state, "css": css}


def _section(view: RunView) -> dict[str, Any]:
    m = view.metrics
    return {
        "view": view,
        "info": _manifest_info(view),
        "weights_warning": _weights_warning(view.manifest),
        "config": _config_excerpt(view.run),
        "manifest_json": json.dumps(view.manifest, indent=2, default=str),
        "summary": _summary(m),
        "report_rows": _report_rows(m),
        "notes": m.get("notes", []),
    }


# Manifest fields shown at the top of a model's section: label -> candidate keys.
_INFO_FIELDS = {
    "model": ("model",),
    "weights": ("weights", "weights_origin"),
    "seed": ("seed",),
    "data": ("data", "dataset", "data_dir", "data_source"),
    "data fingerprint": ("data_fingerprint", "data_sha256"),
    "started": ("started_at", "start_time", "started"),
    "ended": ("ended_at", "end_time", "ended", "finished_at"),
    "git sha": ("git_sha", "git_commit"),
    "versions": ("versions",),
}


def _manifest_info(view: RunView) -> list[tuple[str, fmt.Cell]]:
    rows = [("experiment", fmt.Cell(view.run.name))]
    for label, keys in _INFO_FIELDS.items():
        value = next((view.manifest[k] for k in keys if view.manifest.get(k) is not None), None)
        if value is not None:
            rows.append((label, fmt.Cell(_plain(value))))
    rows.append(("training time", fmt.duration(_trainer_field(view, "train_seconds"))))
    rows.append(("parameters", fmt.params(_trainer_field(view, "params"))))
    return rows


def _trainer_field(view: RunView, key: str) -> Any:
    """``params`` / ``train_seconds``: from metrics.json, else from the manifest, else None."""
    value = (view.metrics or {}).get(key)
    return value if value is not None else view.manifest.get(key)


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(map(_plain, value))
    return str(value)


def _weights_warning(manifest: dict[str, Any]) -> str | None:
    if manifest.get("weights_warning"):
        return str(manifest["weights_warning"])
    if manifest.get("weights") == "random" and manifest.get("expected_pretrained") is True:
        return "pretrained weights were expected, but this model was trained from random initialisation"
    return None


def _config_excerpt(run: RunDir) -> str | None:
    if not run.config.is_file():
        return None
    lines = run.config.read_text(encoding="utf-8", errors="replace").splitlines()
    excerpt = "\n".join(lines[:CONFIG_EXCERPT_LINES])
    if len(lines) > CONFIG_EXCERPT_LINES:
        excerpt += f"\n# ... {len(lines) - CONFIG_EXCERPT_LINES} more lines in config.yaml"
    return excerpt


def _auc_reason(m: dict[str, Any], key: str) -> str:
    return m.get("roc_auc", {}).get("undefined", {}).get(key, "ROC AUC is undefined")


def _macro_auc_cell(m: dict[str, Any], ci: bool = True) -> fmt.Cell:
    """Macro AUC, marked * with a tooltip when it averages only some classes."""
    roc = m.get("roc_auc", {})
    cell = fmt.with_ci(roc.get("macro"), m.get("macro_auc_ci95") if ci else None, reason=_auc_reason(m, "macro"))
    if roc.get("macro_partial") and not cell.is_na:
        defined = ", ".join(roc.get("macro_classes", []))
        cell = replace(cell, text=cell.text + " *", css=cell.css + " partial",
                       title=f"averaged only over the classes where ROC AUC is defined: {defined}")
    return cell


def _summary(m: dict[str, Any]) -> list[tuple[str, fmt.Cell]]:
    roc = m.get("roc_auc", {})
    rows = [
        ("test images", fmt.integer(m.get("n_test"))),
        ("accuracy [95% CI]", fmt.with_ci(m.get("accuracy"), m.get("accuracy_ci95"))),
        ("macro F1 [95% CI]", fmt.with_ci(m.get("macro_f1"), m.get("macro_f1_ci95"))),
        ("weighted F1", fmt.number(m.get("weighted_f1"))),
        ("macro ROC AUC [95% CI]", _macro_auc_cell(m)),
        ("micro ROC AUC", fmt.number(roc.get("micro"), reason=_auc_reason(m, "micro"))),
        ("macro average precision", fmt.number(m.get("average_precision", {}).get("macro"), reason="no class has a positive test example")),
    ]
    for k, value in m.get("top_k_accuracy", {}).items():
        rows.append((f"top-{k} accuracy", fmt.number(value)))
    rows.append(("expected calibration error", fmt.number(m.get("calibration", {}).get("ece", m.get("ece")))))
    return rows


_UNDEFINED = {
    "precision": "undefined: the model never predicted this class (0/0)",
    "recall": "undefined: no test example of this class (0/0)",
    "f1-score": "undefined: the class is neither in the test set nor ever predicted",
}


def _report_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    """sklearn-style classification report rows, plus each class's ROC AUC."""
    report = m["classification_report"] if "classification_report" in m else _report_from_per_class(m)
    auc = m.get("roc_auc", {}).get("per_class", {})
    rows = []
    for cls in m["class_names"]:
        r = report[cls]
        cells = [fmt.number(r.get(k), reason=_UNDEFINED[k]) for k in ("precision", "recall", "f1-score")]
        rows.append({"label": cls, "cells": [*cells, fmt.integer(r.get("support")),
                                             fmt.number(auc.get(cls), reason=_auc_reason(m, cls))], "css": ""})
    total = sum(int(report[c].get("support") or 0) for c in m["class_names"])
    blank = fmt.Cell("")
    rows.append({"label": "accuracy", "cells": [blank, blank, fmt.number(m.get("accuracy")), fmt.integer(total), blank], "css": "avg"})
    for key in ("macro avg", "weighted avg"):
        r = report.get(key, {})
        cells = [fmt.number(r.get(k), reason="undefined for every class") for k in ("precision", "recall", "f1-score")]
        auc_cell = _macro_auc_cell(m, ci=False) if key == "macro avg" else blank
        rows.append({"label": key, "cells": [*cells, fmt.integer(r.get("support")), auc_cell], "css": "avg"})
    return rows


def _report_from_per_class(m: dict[str, Any]) -> dict[str, Any]:
    # A minimal metrics.json (per_class only) still gets its per-class rows.
    return {c: {"precision": v.get("precision"), "recall": v.get("recall"), "f1-score": v.get("f1"),
                "support": v.get("support")} for c, v in m["per_class"].items()}


# --- comparison ------------------------------------------------------------------------------


def _comparison(finished: list[RunView], plots_dir: Path) -> dict[str, Any]:
    if not finished:
        return {"rows": [], "mcnemar": None, "figures": []}
    return {
        "rows": _comparison_rows(finished),
        "mcnemar": _mcnemar(finished),
        "figures": _comparison_figures(finished, plots_dir),
    }


def _comparison_rows(finished: list[RunView]) -> list[dict[str, Any]]:
    best = {
        "accuracy": _best(finished, "accuracy", max),
        "macro_f1": _best(finished, "macro_f1", max),
        "macro_auc": _best(finished, "macro_auc", max),
        "ece": _best(finished, "ece", min),
    }
    rows = []
    for v in finished:
        m = v.metrics
        cells = {
            "accuracy": fmt.with_ci(m.get("accuracy"), m.get("accuracy_ci95")),
            "macro_f1": fmt.with_ci(m.get("macro_f1"), m.get("macro_f1_ci95")),
            "macro_auc": _macro_auc_cell(m),
            "ece": fmt.number(m.get("ece")),
        }
        # Bold the best value of each column (only meaningful with more than one model).
        for key, cell in cells.items():
            if len(finished) > 1 and not cell.is_na and m.get(key) == best[key]:
                cells[key] = replace(cell, css=cell.css + " best")
        rows.append({"view": v, **cells, "params": fmt.params(_trainer_field(v, "params")),
                     "time": fmt.duration(_trainer_field(v, "train_seconds")), "n_test": fmt.integer(m.get("n_test"))})
    return rows


def _best(views: list[RunView], key: str, pick: Any) -> float | None:
    values = [v.metrics[key] for v in views if v.metrics.get(key) is not None]
    return pick(values) if values else None


def _mcnemar(finished: list[RunView]) -> dict[str, Any] | None:
    paired = [v for v in finished if v.run.predictions.is_file()]
    left_out = [v.label for v in finished if v not in paired]
    if len(paired) < 2:
        return None
    try:
        results = mcnemar_pairwise([v.run for v in paired])
    except TriptychError as err:
        return {"error": str(err), "rows": [], "sentence": "", "left_out": left_out}
    from statsmodels.stats.multitest import multipletests  # slow import, needed only here

    labels = {v.run.name: v.label for v in paired}
    holm = multipletests([r["p_value"] for r in results], method="holm")[1]
    rows = []
    for r, adjusted in zip(results, holm):
        a, b = labels[r["experiment_a"]], labels[r["experiment_b"]]
        rows.append({
            "a": a, "b": b, "n": r["n"], "only_a": r["b"], "only_b": r["c"],
            "exact": r["exact"],
            "statistic": fmt.number(r["statistic"], 3), "p": fmt.p_value(r["p_value"]), "p_holm": fmt.p_value(adjusted),
            "significant": r["p_value"] < ALPHA, "p_value": r["p_value"],
        })
    return {"error": None, "rows": rows, "sentence": _mcnemar_sentence(rows), "left_out": left_out}


def _mcnemar_sentence(rows: list[dict[str, Any]]) -> str:
    significant = [r for r in rows if r["significant"]]
    if not significant:
        return f"No difference between the models is significant at {ALPHA} (McNemar's test, uncorrected)."
    parts = []
    for r in significant:
        better, worse = (r["a"], r["b"]) if r["only_a"] > r["only_b"] else (r["b"], r["a"])
        parts.append(f"{better} makes fewer errors than {worse} ({fmt.p_text(r['p_value'])})")
    rest = len(rows) - len(significant)
    tail = f"; the other {rest} pair{'s are' if rest != 1 else ' is'} not significantly different" if rest else ""
    return f"Significant at {ALPHA} (McNemar's test, uncorrected): " + "; ".join(parts) + tail + "."


def _comparison_figures(finished: list[RunView], plots_dir: Path) -> list[EmbeddedFigure]:
    figures = {
        "comparison_roc": ("Macro-average ROC curves of all models (test)",
                           plot_roc_comparison({v.label: v.metrics for v in finished})),
        "comparison_val_accuracy": ("Validation accuracy of all models",
                                    plot_val_accuracy_comparison({v.label: v.history for v in finished if v.history is not None})),
    }
    out = []
    for stem, (caption, fig) in figures.items():
        rendered = render(fig)
        try:
            save_figure(rendered, plots_dir / stem)
        except OSError:
            pass  # the embedded copy in the report is what matters; files beside it are a bonus
        out.append(EmbeddedFigure(caption, _data_uri(rendered.png)))
    return out


def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,  # a typo in the template fails loudly instead of rendering blank
        trim_blocks=True,
        lstrip_blocks=True,
    )
