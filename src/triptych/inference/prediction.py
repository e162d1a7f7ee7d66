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
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from triptych.errors import TriptychError
from triptych.inference.loading import (
    ImageError,
    LoadedModel,
    collect_images,
    load,
    read_image,
)

PROGRESS_MIN_FILES = 64  # show a progress bar (on a terminal) from this many files on


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
    a warning; if none can be read, :class:`TriptychError` is raised.
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
    if top_k < 1:
        raise TriptychError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise TriptychError(f"--batch-size must be at least 1, got {batch_size}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = collect_images(paths)
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
        raise TriptychError(
            f"none of the {len(files)} image(s) could be read (first: {failures[0].path}: {failures[0].reason})"
        )
    return results, failures


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

    The last batch is padded to ``batch_size`` so that the model is traced once.
    """
    show = progress if progress is not None else (len(files) >= PROGRESS_MIN_FILES and sys.stderr.isatty())
    bar = _Progress(len(files), description) if show else None
    try:
        for start in range(0, len(files), batch_size):
            images, kept = [], []
            for path in files[start : start + batch_size]:
                try:
                    images.append(read_image(path))
                    kept.append(path)
                except ImageError as err:
                    failed(Failure(str(path), str(err)))
            if images:
                batch = loaded.preprocess(images)
                padded = _pad(batch, batch_size)
                handle(kept, loaded.predict_batch(padded)[: len(kept)])
            if bar:
                bar.advance(min(batch_size, len(files) - start))
    finally:
        if bar:
            bar.close()


def _pad(batch: np.ndarray, size: int) -> np.ndarray:
    if len(batch) >= size:
        return batch
    return np.concatenate([batch, np.zeros((size - len(batch), *batch.shape[1:]), batch.dtype)])


class _Progress:
    """A rich progress bar on stderr."""

    def __init__(self, total: int, description: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total)

    def advance(self, n: int) -> None:
        self._progress.advance(self._task, n)

    def close(self) -> None:
        self._progress.stop()


# --------------------------------------------------------------------------- output formats


def format_results(results: list[dict], fmt: str) -> str:
    """``table`` (aligned text), ``csv`` (one row per image) or ``json`` (a list of objects)."""
    if fmt == "json":
        return json.dumps(results, indent=2) + "\n"
    if fmt == "csv":
        return _format_csv(results)
    if fmt == "table":
        return _format_table(results)
    raise TriptychError(f"unknown format {fmt!r}; valid: table, csv, json")


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
