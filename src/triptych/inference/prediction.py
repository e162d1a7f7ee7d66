"""Top-k predictions for image files, in batches, with the model's own preprocessing.

>>> from triptych.inference import predict
>>> predict("runs/demo/resnet18", ["cat.png", "photos/"], top_k=3)
[{'path': 'cat.png', 'top_k': [{'label': 'cat', 'probability': 0.91}, ...]}, ...]
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from triptych.errors import InvalidArgumentError
from triptych.inference.loading import LoadedModel, collect_images, load, read_images
from triptych.models.forward import forward_function
from triptych.progress import progress_bar

PROGRESS_MIN_FILES = 64  # show a progress bar (on a terminal) from this many files on
FORMATS = ("table", "csv", "json")

# One compiled forward pass per model, for any batch size (see batch_predictor).


@dataclass(frozen=True)
class Failure:
    path: str
    reason: str


def predict(
    run_or_model: str | os.PathLike | LoadedModel,
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    top_k: int = 3,
    *,
    batch_size: int = 32,
    preprocessing: str | None = None,
    progress: bool | None = None,
) -> list[dict]:
    """Predict the classes of image files (and of the images in folders, recursively).

    Returns one ``{"path": str, "top_k": [{"label": str, "probability": float}, ...]}`` per
    image that could be read, in input order. Images that cannot be decoded are skipped with
    a warning; if none can be read, :class:`~triptych.errors.InvalidArgumentError` is raised.
    """
    results, failures = predict_files(
        run_or_model, paths, top_k, batch_size=batch_size, preprocessing=preprocessing, progress=progress
    )
    for failure in failures:
        warnings.warn(f"skipped {failure.path}: {failure.reason}", stacklevel=2)
    return results


def predict_files(
    run_or_model: str | os.PathLike | LoadedModel,
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    top_k: int = 3,
    *,
    batch_size: int = 32,
    preprocessing: str | None = None,
    progress: bool | None = None,
    on_failure: Callable[[Failure], None] | None = None,
) -> tuple[list[dict], list[Failure]]:
    """:func:`predict`, also returning the images that were skipped and why."""
    check_at_least_one(top_k=top_k, batch_size=batch_size)
    files = collect_images([paths] if isinstance(paths, (str, os.PathLike)) else paths)
    loaded = load(run_or_model, preprocessing)
    k = min(top_k, loaded.num_classes)
    names = np.asarray(loaded.class_names)
    results: list[dict] = []
    failures: list[Failure] = []

    def handle(batch_paths: list[Path], probs: np.ndarray) -> None:
        for path, row in zip(batch_paths, probs):
            order = np.argsort(-row, kind="stable")[:k]
            results.append(
                {"path": str(path), "top_k": [{"label": str(names[i]), "probability": float(row[i])} for i in order]}
            )

    def failed(failure: Failure) -> None:
        failures.append(failure)
        if on_failure:
            on_failure(failure)

    run_batches(loaded, files, batch_size, handle, failed, progress=progress, description="predicting")
    if not results:
        raise InvalidArgumentError(
            f"none of the {len(files)} image(s) could be read (first: {failures[0].path}: {failures[0].reason})"
        )
    return results, failures


def check_at_least_one(**values: int) -> None:
    """Refuse counts below 1 (``top_k=0``, ``batch_size=-1``), naming the argument."""
    for name, value in values.items():
        if value < 1:
            raise InvalidArgumentError(f"{name} must be at least 1, got {value}")


def run_batches(
    loaded: LoadedModel,
    files: list[Path],
    batch_size: int,
    handle: Callable[[list[Path], np.ndarray], None],
    failed: Callable[[Failure], None],
    *,
    progress: bool | None = None,
    description: str = "",
) -> None:
    """Decode ``files`` batch by batch, predict, and call ``handle(paths, probabilities)``.

    Every batch, the last partial one included, goes through one :func:`batch_predictor`
    traced once for any batch size.
    """
    predictor = batch_predictor(loaded)
    enabled = progress if progress is not None else (None if len(files) >= PROGRESS_MIN_FILES else False)
    with progress_bar(len(files), description, enabled=enabled) as advance:
        for start in range(0, len(files), batch_size):
            images, kept, unreadable = read_images(files[start : start + batch_size])
            for path, why in unreadable:
                failed(Failure(path, why))
            if images:
                handle(kept, predictor(loaded.preprocess(images)).numpy())
            advance(min(batch_size, len(files) - start))


def batch_predictor(loaded: LoadedModel) -> Callable[[np.ndarray], tf.Tensor]:
    """The model's inference forward pass, traced once per model whatever the batch sizes it sees
    (Keras's ``predict_on_batch`` traces again for a new batch shape)."""
    height, width = loaded.image_size
    return forward_function(loaded.model, (height, width, 3))


# --------------------------------------------------------------------------- output formats


def format_results(results: list[dict], fmt: str) -> str:
    """``table`` (aligned text), ``csv`` (one row per image) or ``json`` (a list of objects)."""
    if fmt == "json":
        return json.dumps(results, indent=2) + "\n"
    if fmt == "csv":
        return _format_csv(results)
    if fmt == "table":
        return _format_table(results)
    raise InvalidArgumentError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")


def _format_csv(results: list[dict]) -> str:
    k = max(len(r["top_k"]) for r in results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path"] + [f"{kind}_{i}" for i in range(1, k + 1) for kind in ("label", "probability")])
    for r in results:
        writer.writerow([r["path"]] + [v for t in r["top_k"] for v in (t["label"], f"{t['probability']:.6f}")])
    return buffer.getvalue()


def _format_table(results: list[dict]) -> str:
    k = max(len(r["top_k"]) for r in results)
    header = ["image"] + (["prediction"] if k == 1 else [f"top-{i}" for i in range(1, k + 1)])
    rows = [[r["path"]] + [f"{t['label']} {t['probability']:.1%}" for t in r["top_k"]] for r in results]
    widths = [max(len(row[i]) for row in [header, *rows] if i < len(row)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"
