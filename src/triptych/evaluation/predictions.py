"""Read and validate a run's ``predictions.csv`` before any metric is computed from it.

Every check here exists so that a broken file ends in a :class:`TriptychError` that names the
problem, never in a silently wrong number further down (NaN probabilities, a class without a
probability column, a label that is not one of the classes, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from triptych.errors import TriptychError

PROB_PREFIX = "prob_"
REQUIRED_COLUMNS = ("path", "y_true", "y_pred")
# How many offending rows an error message lists before it says "and N more".
_SHOW_ROWS = 5


@dataclass(frozen=True)
class Predictions:
    """A validated predictions table as arrays: labels are indices into ``class_names``."""

    class_names: list[str]
    paths: np.ndarray  # (n,) str
    y_true: np.ndarray  # (n,) int
    y_pred: np.ndarray  # (n,) int
    probs: np.ndarray  # (n, k) float

    @property
    def n(self) -> int:
        return len(self.y_true)

    @property
    def correct(self) -> np.ndarray:
        return self.y_true == self.y_pred


def read_predictions_csv(path: str | Path) -> pd.DataFrame:
    """Read ``predictions.csv``; a missing or unreadable file is a user error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise TriptychError(f"{path}: predictions file not found (the run has not finished its test evaluation)")
    try:
        # Labels stay strings even when class names look like numbers ("0", "1", ...).
        return pd.read_csv(path, dtype={"path": str, "y_true": str, "y_pred": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise TriptychError(f"{path}: cannot read predictions ({err.__class__.__name__}: {err})") from err


def prob_class_names(frame: pd.DataFrame) -> list[str]:
    """Class names in the order of the ``prob_<class>`` columns (the model's output order)."""
    return [str(c)[len(PROB_PREFIX):] for c in frame.columns if str(c).startswith(PROB_PREFIX)]


def validate_predictions(frame: pd.DataFrame, class_names: list[str] | None = None) -> Predictions:
    """Check ``frame`` against the predictions contract and convert it to arrays."""
    _require_columns(frame)
    if len(frame) == 0:
        raise TriptychError("predictions: no rows (empty test set)")
    names = list(class_names) if class_names is not None else prob_class_names(frame)
    _check_class_names(frame, names)
    probs = _probabilities(frame, names)
    _check_finite(frame, probs)
    index = {c: i for i, c in enumerate(names)}
    return Predictions(
        class_names=names,
        paths=frame["path"].astype(str).to_numpy(),
        y_true=_encode(frame, "y_true", index),
        y_pred=_encode(frame, "y_pred", index),
        probs=probs,
    )


def _require_columns(frame: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise TriptychError(
            f"predictions: missing column(s) {', '.join(missing)}; expected path, y_true, y_pred and prob_<class> per class"
        )


def _check_class_names(frame: pd.DataFrame, names: list[str]) -> None:
    if not names:
        raise TriptychError("predictions: no prob_<class> columns, so no class probabilities to evaluate")
    if len(set(names)) != len(names):
        raise TriptychError(f"predictions: duplicate class names {names}")
    missing = [PROB_PREFIX + c for c in names if PROB_PREFIX + c not in frame.columns]
    if missing:
        raise TriptychError(f"predictions: missing probability column(s) {', '.join(missing)}")


def _probabilities(frame: pd.DataFrame, names: list[str]) -> np.ndarray:
    columns = [PROB_PREFIX + c for c in names]
    try:
        return frame[columns].to_numpy(dtype=float)
    except (ValueError, TypeError) as err:
        raise TriptychError(f"predictions: non-numeric value in the probability columns ({err})") from err


def _check_finite(frame: pd.DataFrame, probs: np.ndarray) -> None:
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise TriptychError(
            f"predictions: {len(rows)} row(s) have NaN or infinite probabilities "
            f"({_describe_rows(frame, rows)}); refusing to compute metrics from them"
        )


def _encode(frame: pd.DataFrame, column: str, index: dict[str, int]) -> np.ndarray:
    # Compare as text: class names such as "0", "1" may have been parsed as numbers.
    labels = frame[column].astype(str)
    codes = labels.map(index)
    unknown = codes.isna().to_numpy()
    if unknown.any():
        rows = np.flatnonzero(unknown)
        values = sorted({str(v) for v in labels.iloc[rows]})[:_SHOW_ROWS]
        raise TriptychError(
            f"predictions: {len(rows)} row(s) have a {column} that is not a known class "
            f"(values {values}; classes {list(index)}; {_describe_rows(frame, rows)})"
        )
    return codes.to_numpy(dtype=int)


def _describe_rows(frame: pd.DataFrame, rows: np.ndarray) -> str:
    # Data rows are numbered from 1 after the header, which is how people count lines in a CSV.
    shown = ", ".join(f"row {r + 1} ({frame['path'].iloc[r]})" for r in rows[:_SHOW_ROWS])
    more = f" and {len(rows) - _SHOW_ROWS} more" if len(rows) > _SHOW_ROWS else ""
    return shown + more
