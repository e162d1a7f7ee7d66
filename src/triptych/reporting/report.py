"""Build one self-contained ``report.html`` from saved run directories, without retraining.

The runs are read by :mod:`triptych.reporting.runs` (read only: a report never writes into a run
directory). Figures are embedded as base64 PNG data URIs and the CSS is inline, so the file opens
anywhere with no network; the PNG and SVG files are also saved in ``<report name>_plots/``
beside the report (one folder per experiment, the comparison figures at its top).

Optional inputs, shown when present: each run's ``profile.json`` (parameters, multiply-adds,
latency, throughput) and ``gradcam/gradcam.json`` (overlays of the most confident mistakes), and
the architecture diagrams ``diagrams/<model>.svg|png`` beside the report or beside the runs.
``comparison.json`` (see :mod:`triptych.reporting.comparison`) is written beside the report.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from triptych import __version__, budget
from triptych.io import atomic_write_text
import triptych.reporting.format as fmt
from triptych.reporting.comparison import ALPHA, CARD_FIELDS, mcnemar_summary, write_comparison
from triptych.reporting.repeats import repeats_view
from triptych.reporting.plots import (
    RUN_FIGURES,
    Rendered,
    plot_roc_comparison,
    plot_val_accuracy_comparison,
    render,
    run_figures,
    save_figure,
)
from triptych.reporting.runs import EmbeddedFigure, RunView, load_views
from triptych.rundir import (
    PREDICTED_FROM_TRUNK_CACHE,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_RUNNING,
    DataInfo,
    FeatureCacheInfo,
    RecipeInfo,
    RunDir,
    RunRecord,
    TrunkCacheInfo,
)

TEMPLATES = Path(__file__).parent / "templates"
DIAGRAMS_DIR = "diagrams"
GRADCAM_DIR = "gradcam"
MAX_EMBED_BYTES = 8 * 2**20  # a bigger image file is left out of the report (with a note)
MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
CONFIG_EXCERPT_LINES = 30


class FigureCache:
    """Each finished run's figures, rendered ahead of its report (the runner renders a run's while the
    next experiment runs: ~2.8 s a run on 2 cores, most of a report's time) and found again by what
    they show: the run's metrics, history and label. :func:`build_report` renders what it lacks."""

    def __init__(self) -> None:
        self._rendered: dict[str, dict[str, Rendered]] = {}

    def add_run(self, run_dir: str | Path) -> None:
        """Render ``run_dir``'s figures now, if it is finished."""
        for view in load_views([run_dir]):
            if view.finished:
                self.figures(view)

    def figures(self, view: RunView) -> dict[str, Rendered]:
        """``view``'s figures by name, rendered now unless they were before."""
        history = "" if view.history is None else view.history.to_csv(index=False)
        shown = json.dumps([view.metrics, history, view.label], sort_keys=True, default=str)
        key = hashlib.sha256(shown.encode()).hexdigest()
        if key not in self._rendered:
            figures = run_figures(view.metrics, view.history, view.label)
            self._rendered[key] = {name: render(fig) for name, fig in figures.items()}
        return self._rendered[key]


def build_report(
    run_dirs: Iterable[str | Path], out: str | Path, title: str = "triptych report", figures: FigureCache | None = None
) -> Path:
    """Write ``out`` (one self-contained HTML file) for the given experiment or output dirs;
    ``figures``: run figures rendered before (:class:`FigureCache`)."""
    out = Path(out)
    plots_dir = out.with_name(out.stem + "_plots")
    views = load_views(run_dirs)
    diagram_dirs = [out.parent / DIAGRAMS_DIR, *(v.run.root.parent / DIAGRAMS_DIR for v in views)]
    figures = figures or FigureCache()
    for view in views:
        if view.finished:
            view.figures = _run_figures(view, plots_dir / view.run.name, figures)
            view.diagrams = _diagrams(view, diagram_dirs)
            view.gradcam = _gradcam(view)
    finished = [v for v in views if v.finished]
    data = write_comparison(views, out.with_name("comparison.json"))
    context = {
        "title": title,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
        "views": views,
        "finished": finished,
        "overview": [_overview_row(v) for v in views],
        "sections": [_section(v) for v in finished],
        "comparison": _comparison(finished, data, plots_dir),
        "tensorboard": _tensorboard_commands(views),
    }
    html = _environment().get_template("report.html.j2").render(**context)
    return atomic_write_text(out, html)


def _tensorboard_commands(views: list[RunView]) -> list[str]:
    """``tensorboard --logdir DIR`` for each folder whose runs logged TensorBoard scalars."""
    folders = dict.fromkeys(v.run.root.parent for v in views if v.run.tensorboard_dir.is_dir())
    return [f"tensorboard --logdir {folder}" for folder in folders]


def _run_figures(view: RunView, folder: Path, cache: FigureCache) -> list[EmbeddedFigure]:
    figures = []
    for name, rendered in cache.figures(view).items():
        try:
            save_figure(rendered, folder / name)
        except OSError as err:  # the embedded copy is what matters
            view.problems.append(f"could not save {folder.name}/{name}.png|svg: {err}")
        figures.append(EmbeddedFigure(RUN_FIGURES[name], _data_uri(rendered.png)))
    return figures


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _read_embeddable(view: RunView, path: Path) -> bytes | None:
    """The bytes of an image file to embed, or None (with a problem noted) when it cannot be."""
    try:
        size = path.stat().st_size
        if size > MAX_EMBED_BYTES:
            view.problems.append(f"{path.name} is {size / 2**20:.0f} MB, too big to embed; left out")
            return None
        return path.read_bytes()
    except OSError as err:
        view.problems.append(f"cannot read {path.name}: {err.strerror or err}")
        return None


def _file_uri(view: RunView, path: Path) -> str | None:
    data = _read_embeddable(view, path)
    return None if data is None else _data_uri(data, MIME[path.suffix.lower()])


_SVG_SIZE = re.compile(rb"<svg\b[^>]*?\swidth=\"([\d.]+)[a-z]*\"[^>]*?\sheight=\"([\d.]+)[a-z]*\"", re.S)


def _aspect(data: bytes, suffix: str) -> float | None:
    """Width / height of a PNG or SVG image, or None when it cannot be told."""
    if suffix == ".png" and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
    else:
        match = _SVG_SIZE.search(data[:4096])
        if not match:
            return None
        width, height = float(match[1]), float(match[2])
    return width / height if height else None


def _diagrams(view: RunView, folders: list[Path]) -> list[EmbeddedFigure]:
    """The model's architecture drawings, ``diagrams/<model>[_<part>].svg|png``, from the first
    folder that has any (beside the report, else beside the run). The PNG is preferred: graphviz
    renders it itself, while its SVG places sub- and superscripts for its own font metrics, so
    they overlap in a browser; the SVG is the fallback."""
    model = view.model
    if not model:
        return []
    for folder in dict.fromkeys(folders):  # in order, without repeats
        if not folder.is_dir():
            continue
        files: dict[str, dict[str, Path]] = {}
        for path in folder.iterdir():
            suffix = path.suffix.lower()
            if suffix in (".svg", ".png") and (path.stem == model or path.stem.startswith(model + "_")) and path.is_file():
                files.setdefault(path.stem, {})[suffix] = path
        if not files:
            continue
        figures = []
        for stem in sorted(files, key=lambda s: (s != model, s)):  # the main drawing first
            for path in (files[stem].get(".png"), files[stem].get(".svg")):
                data = None if path is None else _read_embeddable(view, path)
                if data is not None:
                    break
            if data is None:
                continue
            suffix = path.suffix.lower()
            part = stem[len(model) + 1:].replace("_", " ")
            what = f"{model}: {part}" if part else model
            aspect = _aspect(data, suffix)
            figures.append(EmbeddedFigure(
                f"Architecture of {what}, drawn from the built model graph ({DIAGRAMS_DIR}/{path.name})",
                _data_uri(data, MIME[suffix]), wide=aspect is not None and aspect > 1.4))
        return figures
    return []


def _gradcam(view: RunView) -> dict[str, Any] | None:
    """The Grad-CAM gallery from ``gradcam/gradcam.json``: overlays embedded, most confident first."""
    folder = view.run.root / GRADCAM_DIR
    index = folder / "gradcam.json"
    if not index.is_file():
        return None
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        items = data.get("items") or []
        if not isinstance(items, list):
            raise TypeError("items is not a list")
    except (OSError, ValueError, TypeError, AttributeError) as err:
        view.problems.append(f"gradcam/gradcam.json unreadable: {err}")
        return None
    shown, missing = [], 0
    for item in items:
        overlay = folder / str(item.get("overlay") or "") if isinstance(item, dict) else folder
        inside = overlay.resolve().parent == folder.resolve() or folder.resolve() in overlay.resolve().parents
        if not inside or overlay.suffix.lower() not in MIME or not overlay.is_file():
            missing += 1
            continue
        uri = _file_uri(view, overlay)
        if uri is None:
            missing += 1
            continue
        prob = item.get("prob")
        shown.append({
            "uri": uri,
            "true": str(item.get("true", "?")),
            "pred": str(item.get("pred", "?")),
            "prob": fmt.NA if prob is None else f"{float(prob):.3f}",
            "path": str(item.get("path") or overlay.name),
            "name": Path(str(item.get("path") or overlay.name)).name,
        })
    return {"layer": data.get("layer"), "explains": data.get("explains"), "items": shown, "missing": missing}


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
        "info": _record_info(view),
        "weights_warning": _weights_warning(view.record),
        "data_note": view.record.data.note if view.record.data else None,
        "profile": _profile_rows(view.profile),
        "config": _config_excerpt(view.run),
        "manifest_json": json.dumps(view.record.model_dump(mode="json"), indent=2),
        "summary": _summary(m),
        "report_rows": _report_rows(m),
        "notes": m.get("notes", []),
    }


def _record_info(view: RunView) -> list[tuple[str, fmt.Cell]]:
    """The run record at the top of a finished model's section (fields it does not have left out)."""
    r = view.record
    warned = _weights_warning(r) is not None  # the red warning above the section already gives the note
    values: list[tuple[str, Any]] = [
        ("experiment", view.run.name),
        ("model", r.model),
        ("family", r.family),
        ("weights", r.weights),
        ("weights note", None if warned else r.weights_note),
        ("seed", r.seed),
        ("image size", None if r.image_size is None else fmt.image_size(r.image_size)),
        ("preprocessing", r.preprocessing),
        ("precision", None if r.precision is None else f"{r.precision.precision} ({r.precision.requested}: {r.precision.reason})"),
        ("data", None if r.data is None else _data_text(r.data)),
        ("phases done", ", ".join(r.phases_done) or None),
        ("feature cache", None if r.feature_cache is None else _feature_cache_text(r.feature_cache)),
        ("time budget", None if r.budget is None else budget.describe(r.budget)),
        *_recipe_rows(r.recipe),
        ("fine-tune", None if r.trunk_cache is None else _trunk_cache_text(r.trunk_cache)),
        ("test predictions", _predicted_from_text(r.predicted_from)),
        ("started", r.started),
        ("ended", r.finished),
        ("git sha", r.git_sha),
        ("versions", ", ".join(f"{k} {v}" for k, v in r.versions.items()) or None),
    ]
    rows = [(label, v if isinstance(v, fmt.Cell) else fmt.Cell(str(v))) for label, v in values if v is not None]
    rows.append(("training time", fmt.duration(_trainer_field(view, "train_seconds"))))
    rows.append(("parameters", fmt.params(_trainer_field(view, "params"))))
    if r.peak_rss_mb is not None:
        rows.append(("peak memory", fmt.Cell(f"{r.peak_rss_mb:,.0f} MB",
                                             title="peak resident memory (RSS) of this experiment's own process")))
    return rows


def _data_text(data: DataInfo) -> str:
    """``cifar10: 900 train / 100 val / 300 test images`` (the fingerprints stay in the manifest)."""
    return f"{data.origin}: {data.train:,} train / {data.val:,} val / {data.test:,} test images"


def _feature_cache_text(cache: FeatureCacheInfo) -> str:
    shape = "×".join(f"{d:,}" for d in cache.train_features)
    views = f"{cache.views} view{'s' if cache.views != 1 else ''}"
    where = "reused from the cache" if cache.hit else "computed"
    return f"{where}, train features {shape} ({cache.dtype}, {views}, {cache.seconds:.1f} s)"


def _recipe_rows(recipe: RecipeInfo | None) -> list[tuple[str, str | None]]:
    """The optional recipe parts; those that are off are left out (augmentation always shows)."""
    if recipe is None:
        return []
    weights = recipe.class_weights
    return [
        ("augmentation", recipe.augment),
        ("weight average", None if recipe.ema_momentum is None else f"EMA, momentum {recipe.ema_momentum:g}"),
        ("class weights", None if weights is None else
         "balanced: " + ", ".join(f"{name} {w:.2f}" for name, w in weights.items())),
        ("test-time augmentation", None if recipe.tta == "none" else f"{recipe.tta} (probabilities averaged)"),
    ]


def _trunk_cache_text(cache: TrunkCacheInfo) -> str:
    shape = "×".join(f"{d:,}" for d in cache.train_shapes[0])
    views = "1 clean view" if cache.views == 1 else f"{cache.views} augmented views"
    where = "reused from the cache" if cache.hit else f"computed in {cache.seconds:.1f} s"
    return f"on cached trunk activations ({views} a training image; {shape} {cache.dtype}, {where})"


def _predicted_from_text(predicted_from: str | None) -> str | None:
    if predicted_from != PREDICTED_FROM_TRUNK_CACHE:
        return None  # the ordinary way needs no note
    return ("the fine-tuned top on the frozen trunk's cached float16 activations of the test images "
            "(the same numbers as the whole model, up to float16 rounding)")


def _profile_rows(profile: dict[str, Any] | None) -> list[tuple[str, fmt.Cell]]:
    """The measured model card (``profile.json``), or nothing when the run has none."""
    if not profile:
        return []
    p = profile
    size = p.get("image_size") or (p.get("input_shape") or [None])[0]
    at = f" at {int(size)}×{int(size)}" if size else ""
    macs = p.get("macs") if p.get("macs") is not None else (None if p.get("gmacs") is None else p["gmacs"] * 1e9)
    return [
        ("parameters", fmt.params(p.get("params"))),
        ("trainable parameters", fmt.params(p.get("trainable_params"))),
        (f"multiply-adds / image{at}", fmt.na("not measured") if macs is None else
         fmt.Cell(f"{macs / 1e9:.2f} G", css="num", title=f"{int(macs):,} multiply-adds")),
        ("GFLOPs / image", fmt.gflops(macs, size)),
        ("weights size (MB)", fmt.megabytes(p.get("weights_mb"), "not measured")),
        ("latency, batch 1 (ms)", fmt.milliseconds(p.get("latency_ms"))),
        (f"throughput, batch {p.get('batch_size') or '?'} (img/s)", fmt.per_second(p.get("throughput_img_s"))),
        ("measured on", fmt.Cell(str(p["device"])) if p.get("device") else fmt.na("not recorded")),
    ]


def _trainer_field(view: RunView, key: str) -> Any:
    """``params`` / ``train_seconds``: from metrics.json, else the run record, else profile.json, else None."""
    record = view.record.model_dump() if view.record else {}
    for source in (view.metrics, record, view.profile):
        if (source or {}).get(key) is not None:
            return source[key]
    return None


def _short_weights(origin: str) -> str:
    """'local file x.weights.h5 (sha256 ...)' -> 'local file' for the narrow table; the full
    origin is in the cell's tooltip and in the model's own section."""
    return "local file" if origin.startswith("local file") else origin


def _weights_warning(record: RunRecord) -> str | None:
    """A red warning when the weights are not what the model expected, with the runner's reason."""
    if record.weights != "random" or record.expected_pretrained is not True:
        return None
    text = "pretrained weights were expected, but this model was trained from random initialisation"
    return f"{text}. Why: {record.weights_note}" if record.weights_note else text


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
        ("balanced accuracy [95% CI]", fmt.with_ci(m.get("balanced_accuracy"), m.get("balanced_accuracy_ci95"),
                                                   reason="not computed (metrics.json from an older triptych)")),
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


def _comparison(finished: list[RunView], data: dict[str, Any], plots_dir: Path) -> dict[str, Any]:
    """The comparison section from ``comparison.json``'s ``data`` (one row per finished model)."""
    if not finished:
        return {"rows": [], "mcnemar": None, "figures": [], "qualitative": [], "published": None, "cards_problem": None,
                "repeats": None}
    return {
        "rows": _comparison_rows(finished, data["rows"]),
        "mcnemar": _mcnemar_view(data["mcnemar"]),
        "repeats": repeats_view(data.get("repeats")),
        "qualitative": _qualitative_rows(data["rows"]),
        "published": data["published"],
        "cards_problem": data.get("cards_problem"),
        "figures": _comparison_figures(finished, plots_dir),
    }


# comparison.json key -> which value is best (bold) in the measured table.
_BEST = {
    "accuracy": max, "macro_f1": max, "macro_auc": max, "throughput": max,
    "ece": min, "params": min, "flops": min, "latency_ms": min, "train_seconds": min, "peak_memory_mb": min,
}


def _comparison_rows(finished: list[RunView], data_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The measured table: test metrics and costs, one row per model, best of each column bold."""
    by_experiment = {row["experiment"]: row for row in data_rows}
    best = {}
    for key, pick in _BEST.items():
        values = [row[key] for row in data_rows if row.get(key) is not None]
        best[key] = pick(values) if values else None
    rows = []
    for v in finished:
        m, d = v.metrics, by_experiment[v.run.name]
        device = f" on {d['device']}" if d.get("device") else ""
        warning = _weights_warning(v.record)
        cells = {
            "accuracy": fmt.with_ci(m.get("accuracy"), m.get("accuracy_ci95")),
            "macro_f1": fmt.with_ci(m.get("macro_f1"), m.get("macro_f1_ci95")),
            "macro_auc": _macro_auc_cell(m),
            "ece": fmt.number(d["ece"]),
            "params": fmt.params(d["params"]),
            "flops": fmt.gflops(d["macs"], d["image_size"]),
            "latency_ms": fmt.milliseconds(d["latency_ms"], title=f"median of batch-1 predictions{device}"),
            "throughput": fmt.per_second(d["throughput"], title=f"images per second at batch {d['batch_size'] or '?'}{device}"),
            "train_seconds": fmt.duration(d["train_seconds"]),
            "peak_memory_mb": fmt.megabytes(d["peak_memory_mb"], "peak memory was not recorded",
                                            title="peak resident memory (RSS) of the training process, MB"),
        }
        # Bold the best value of each column (only meaningful with more than one model).
        for key, cell in cells.items():
            if len(finished) > 1 and not cell.is_na and d.get(key) is not None and d[key] == best[key]:
                cells[key] = replace(cell, css=cell.css + " best")
        weights = d.get("weights")
        rows.append({
            "view": v, **cells,
            "n_test": fmt.integer(m.get("n_test")),
            "image_size": fmt.image_size(d["image_size"]),
            "weights": fmt.Cell(
                _short_weights(str(weights)),
                title=" - ".join(t for t in (str(weights), warning or d.get("weights_note")) if t),
                css="status-bad" if warning else "",
            )
            if weights else fmt.na("the weights origin was not recorded"),
        })
    return rows


def _qualitative_rows(data_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The model cards of the families compared, one row per family (its models listed)."""
    families: dict[str, dict[str, Any]] = {}
    for row in data_rows:
        if not row.get("architecture"):
            continue
        entry = families.setdefault(row["family"], {"family": row["family"], "models": [],
                                                    **{k: row[k] for k in CARD_FIELDS}})
        if row["label"] not in entry["models"]:
            entry["models"].append(row["label"])
    return list(families.values())


def _mcnemar(finished: list[RunView]) -> dict[str, Any] | None:
    return _mcnemar_view(mcnemar_summary(finished))


def _mcnemar_view(summary: dict[str, Any]) -> dict[str, Any] | None:
    """McNemar rows for the template; None when fewer than two models could be paired."""
    if len(summary["compared"]) < 2:
        return None
    rows = [{
        "a": r["model_a"], "b": r["model_b"], "n": r["n"], "only_a": r["only_a_right"], "only_b": r["only_b_right"],
        "exact": r["exact"], "statistic": fmt.number(r["statistic"], 3), "p": fmt.p_value(r["p_value"]),
        "p_holm": fmt.p_value(r["p_holm"]), "significant": r["significant"], "p_holm_value": r["p_holm"],
    } for r in summary["pairs"]]
    sentence = _mcnemar_sentence(rows) if rows else ""
    return {"error": summary["error"], "rows": rows, "sentence": sentence, "left_out": summary["left_out"]}


HOLM = "p-values Holm-adjusted for the number of pairs"


def _mcnemar_sentence(rows: list[dict[str, Any]]) -> str:
    significant = [r for r in rows if r["significant"]]
    if not significant:
        return f"No difference between the models is significant at {ALPHA} (McNemar's test, {HOLM})."
    parts = []
    for r in significant:
        better, worse = (r["a"], r["b"]) if r["only_a"] > r["only_b"] else (r["b"], r["a"])
        parts.append(f"{better} makes fewer errors than {worse} (Holm-adjusted {fmt.p_text(r['p_holm_value'])})")
    rest = len(rows) - len(significant)
    tail = f"; the other {rest} pair{'s are' if rest != 1 else ' is'} not significantly different" if rest else ""
    return f"Significant at {ALPHA} (McNemar's test, {HOLM}): " + "; ".join(parts) + tail + "."


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
