"""``comparison.json``: one row per finished model, measured and qualitative, in plain JSON.

Each row joins what a run directory holds -- test metrics (``metrics.json``), the model's
measured profile (``profile.json``: parameters, multiply-adds, latency, throughput), training
time and peak memory (the run record, ``manifest.json``) -- with the qualitative model card of the run's
family (``triptych/models/cards.yaml``). Beside the rows: pairwise McNemar p-values on the
shared test images, the repeats of each repeated model (mean ± sd, every run, and a test between
models over the repeats: :mod:`triptych.reporting.repeats`), and the seed study's published numbers, labelled as measured on
*different data* so they are never read as comparable with ours.

Every value that a run did not record is ``null``; a run without ``profile.json`` still gets
its row. Nothing here imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from statsmodels.stats.multitest import multipletests

from triptych.errors import TriptychError
from triptych.evaluation.compare import mcnemar_pairwise
from triptych.io import atomic_write_json
from triptych.models.profile import load_cards
from triptych.models.registry import get_spec
from triptych.reporting.repeats import repeats_summary
from triptych.reporting.runs import RunView, load_views, read_profile
from triptych.rundir import RunDir, RunRecord

ALPHA = 0.05
CARD_FIELDS = ("architecture", "key_innovation", "pros", "cons", "best_use_case")
# Every row has exactly these keys (null where unknown), in this order.
ROW_KEYS = (
    "model", "label", "experiment", "family",
    "n_test", "accuracy", "accuracy_ci95", "macro_f1", "macro_f1_ci95", "macro_auc", "macro_auc_ci95", "ece",
    "params", "trainable_params", "macs", "gmacs", "flops", "gflops", "weights_mb", "image_size",
    "latency_ms", "throughput", "batch_size", "device",
    "train_seconds", "peak_memory_mb", "weights", "expected_pretrained", "weights_note",
    *CARD_FIELDS,
)
PUBLISHED_LABEL = "published, different data"
# cards.yaml records the test set; the size of the whole data set is the seed study's own figure.
PUBLISHED_IMAGES = "~20,000 WikiArt images"


def write_comparison(runs: Iterable[RunView | RunDir | str | Path], out_json: str | Path) -> dict[str, Any]:
    """Write ``out_json`` (``comparison.json``) for the finished runs among ``runs`` and return it.

    ``runs`` holds experiment directories (``RunDir`` or paths; an output directory stands for
    its experiments) or already loaded :class:`RunView` objects. Runs that are not finished
    (status not ``done``, or no readable metrics) get no row.
    """
    runs = list(runs)
    views = [r for r in runs if isinstance(r, RunView)]
    paths = [r.root if isinstance(r, RunDir) else r for r in runs if not isinstance(r, RunView)]
    data = comparison_data(views + (load_views(paths) if paths else []))
    atomic_write_json(out_json, data)
    return data


def comparison_data(views: list[RunView]) -> dict[str, Any]:
    """The comparison of loaded runs."""
    finished = [v for v in views if v.finished]
    cards, cards_problem = _cards()
    rows = [comparison_row(v.run, v.record, v.metrics, label=v.label, cards=cards) for v in finished]
    data = {
        "rows": rows,
        "mcnemar": mcnemar_summary(finished),
        "published": published_reference(cards),
        "cards_problem": cards_problem,
        "units": {
            "accuracy": "fraction of test images classified correctly; *_ci95: 95% bootstrap interval",
            "macs": "multiply-adds per image at image_size; gmacs = macs / 1e9",
            "flops": "floating-point operations per image = 2 x macs; gflops = flops / 1e9",
            "latency_ms": "median milliseconds per image at batch 1, on device",
            "throughput": "images per second at batch_size, on device",
            "train_seconds": "wall-clock training time",
            "peak_memory_mb": "peak resident memory (RSS) of the training process, MiB",
            "weights_mb": "size of the weights in memory, MiB",
        },
    }
    repeats = repeats_summary(finished, ALPHA)
    if repeats is not None:  # only reports with repeats carry the key: single runs' comparison.json is unchanged
        data["repeats"] = repeats
    return data


def comparison_row(
    run: RunDir,
    record: RunRecord,
    metrics: dict[str, Any],
    *,
    label: str | None = None,
    cards: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One model's row: every key of :data:`ROW_KEYS`, ``None`` where the run did not record it."""
    profile = read_profile(run)[0] or {}
    model = record.model or metrics.get("model")
    family = model_family(record, model)
    macs = _first(profile.get("macs"))
    gmacs = _first(profile.get("gmacs"), None if macs is None else round(macs / 1e9, 3))
    if macs is None and gmacs is not None:
        macs = round(gmacs * 1e9)
    card = ((cards or {}).get("families") or {}).get(family) or {}
    row = {
        "model": model,
        "label": label or model or run.name,
        "experiment": run.name,
        "family": family,
        "n_test": metrics.get("n_test"),
        "accuracy": metrics.get("accuracy"),
        "accuracy_ci95": metrics.get("accuracy_ci95"),
        "macro_f1": metrics.get("macro_f1"),
        "macro_f1_ci95": metrics.get("macro_f1_ci95"),
        "macro_auc": _first(metrics.get("macro_auc"), (metrics.get("roc_auc") or {}).get("macro")),
        "macro_auc_ci95": metrics.get("macro_auc_ci95"),
        "ece": _first(metrics.get("ece"), (metrics.get("calibration") or {}).get("ece")),
        "params": _first(profile.get("params"), metrics.get("params")),
        "trainable_params": _first(profile.get("trainable_params"), metrics.get("trainable_params")),
        "macs": macs,
        "gmacs": gmacs,
        "flops": None if macs is None else 2 * int(macs),
        "gflops": None if macs is None else round(2 * macs / 1e9, 3),
        "weights_mb": profile.get("weights_mb"),
        "image_size": _first(profile.get("image_size"), record.image_size,
                             (profile.get("input_shape") or [None])[0]),
        "latency_ms": profile.get("latency_ms"),
        "throughput": _first(profile.get("throughput_img_s"), profile.get("throughput")),
        "batch_size": profile.get("batch_size"),
        "device": profile.get("device"),
        "train_seconds": _first(metrics.get("train_seconds"), record.train_seconds),
        "peak_memory_mb": record.peak_rss_mb,
        "weights": record.weights,
        "expected_pretrained": record.expected_pretrained,
        "weights_note": record.weights_note,
        **{key: card.get(key) for key in CARD_FIELDS},
    }
    return {key: row[key] for key in ROW_KEYS}


def model_family(record: RunRecord, model: str | None) -> str | None:
    """The registry family of a run: the record's ``family``, else the registry's."""
    if record.family:
        return record.family
    if not model:
        return None
    try:
        return get_spec(str(model)).family
    except TriptychError:
        return None


def mcnemar_summary(finished: list[Any]) -> dict[str, Any]:
    """Pairwise McNemar tests of the finished runs that have a ``predictions.csv``.

    ``pairs`` holds, per pair, the images only A / only B classified correctly, the test used,
    the p-value and its Holm-adjusted value (which ``significant`` is judged on); ``error`` says
    why there are none."""
    paired = [v for v in finished if v.run.predictions.is_file()]
    result: dict[str, Any] = {
        "alpha": ALPHA,
        "test": "McNemar: exact binomial when fewer than 25 images differ, else chi-square with continuity correction",
        "pairs": [],
        "error": None,
        "compared": [v.label for v in paired],
        "left_out": [v.label for v in finished if v not in paired],
    }
    if len(paired) < 2:
        result["error"] = "needs at least two finished models with a predictions.csv"
        return result
    try:
        tests = mcnemar_pairwise([v.run for v in paired])
    except TriptychError as err:
        result["error"] = str(err)
        return result
    views = {v.run.name: v for v in paired}
    holm = multipletests([t["p_value"] for t in tests], method="holm")[1]
    for t, adjusted in zip(tests, holm):
        a, b = views[t["experiment_a"]], views[t["experiment_b"]]
        result["pairs"].append({
            "experiment_a": a.run.name, "experiment_b": b.run.name, "model_a": a.label, "model_b": b.label,
            "n": t["n"], "only_a_right": t["b"], "only_b_right": t["c"], "exact": bool(t["exact"]),
            "statistic": t["statistic"], "p_value": t["p_value"], "p_holm": float(adjusted),
            # Several pairs are several tests: significance is judged on the Holm-adjusted p-value.
            "significant": float(adjusted) < ALPHA,
        })
    return result


def published_reference(cards: dict[str, Any] | None) -> dict[str, Any] | None:
    """The seed study's numbers from ``cards.yaml``: a reference, measured on other data."""
    published = (cards or {}).get("published")
    if not published:
        return None
    test_images = published.get("test_images")
    images = published.get("images") or PUBLISHED_IMAGES
    test_text = f"{int(test_images):,}-image test set" if test_images else "a different test set"
    description = f"{published.get('source') or 'seed study'}: {images}, {test_text}"
    metric = published.get("metric") or "accuracy"
    return {
        "label": PUBLISHED_LABEL,
        "description": description,
        "title": f"{PUBLISHED_LABEL} ({description})",
        "comparable_with_our_rows": False,
        "source": published.get("source"),
        "task": published.get("task"),
        "test_images": test_images,
        "metric": metric,
        "rows": [{"model": model, metric: _number(value)} for model, value in (published.get("results") or {}).items()],
    }


def _cards() -> tuple[dict[str, Any] | None, str | None]:
    try:
        return load_cards(), None
    except (TriptychError, OSError) as err:
        return None, f"model cards unavailable: {err}"


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)
