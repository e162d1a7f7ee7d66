"""Callbacks that keep a run's files safe across kills: history and best checkpoint, written atomically."""

from __future__ import annotations

import csv
import io
import json
import math
import time
import warnings
from pathlib import Path

import keras

from triptych.io import atomic_path, atomic_write_json, atomic_write_text

HISTORY_COLUMNS = ("epoch", "accuracy", "loss", "val_accuracy", "val_loss", "learning_rate")


class HistoryWriter(keras.callbacks.Callback):
    """Rewrites ``history.csv`` after every epoch.

    Rows of epoch >= the epoch just finished are replaced, so a run resumed from an older
    backup neither repeats nor loses an epoch. ``extra`` columns (e.g. ``phase``) are
    added to every row.
    """

    def __init__(self, path: Path, extra: dict[str, object] | None = None, epoch_offset: int = 0):
        super().__init__()
        self.path = Path(path)
        self.extra = extra or {}
        self.epoch_offset = epoch_offset
        self._epoch_started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        row = {"epoch": epoch + self.epoch_offset}
        row.update({key: _plain(value) for key, value in logs.items()})
        row.setdefault("learning_rate", _plain(self.model.optimizer.learning_rate))
        row["epoch_seconds"] = round(time.perf_counter() - self._epoch_started, 3)
        row.update(self.extra)
        rows = [r for r in read_history_rows(self.path) if int(r["epoch"]) < row["epoch"]]
        rows.append(row)
        write_history_rows(self.path, rows)


def read_history_rows(path: Path) -> list[dict[str, str]]:
    if not Path(path).exists():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_history_rows(path: Path, rows: list[dict]) -> None:
    columns = [c for c in HISTORY_COLUMNS if any(c in r for r in rows)]
    columns += sorted({k for r in rows for k in r} - set(columns))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the weights of the best epoch on ``monitor``, atomically, and remembers the best
    value on disk so that a resumed run does not forget an earlier, better epoch."""

    def __init__(
        self, weights_path: Path, monitor: str = "val_accuracy", epoch_offset: int = 0, save_model: keras.Model | None = None
    ):
        super().__init__()
        self.save_model = save_model  # whose weights to save (default: the model being trained)
        self.weights_path = Path(weights_path)
        self.state_path = self.weights_path.with_suffix("").with_suffix(".json")
        self.monitor = monitor
        self.mode_max = "acc" in monitor
        self.epoch_offset = epoch_offset

    def _best(self) -> float | None:
        if self.state_path.exists() and self.weights_path.exists():
            return json.loads(self.state_path.read_text())["value"]
        return None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or math.isnan(float(value)):
            return
        best = self._best()
        improved = best is None or (value > best if self.mode_max else value < best)
        if improved:
            with atomic_path(self.weights_path, suffix=".weights.h5") as tmp:
                (self.save_model or self.model).save_weights(str(tmp))
            atomic_write_json(
                self.state_path, {"monitor": self.monitor, "value": float(value), "epoch": epoch + self.epoch_offset}
            )

    def best_epoch(self) -> int | None:
        return best_checkpoint_epoch(self.weights_path)


def load_model_weights(model: keras.Model, path: Path) -> None:
    """Load saved layer weights, ignoring optimizer state (a fresh optimizer starts each phase)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(str(path))


def best_checkpoint_epoch(weights_path: Path) -> int | None:
    state = Path(weights_path).with_suffix("").with_suffix(".json")
    if not state.exists():
        return None
    return int(json.loads(state.read_text())["epoch"])


def _plain(value):
    """A number for history.csv: Python and numpy scalars, tensors, and (under tf.distribute) the
    optimizer's mirrored learning-rate variable, which float() alone does not convert."""
    try:
        return round(float(keras.ops.convert_to_numpy(value)), 6)
    except (TypeError, ValueError):
        return value
