"""Pairwise McNemar tests: do two models make significantly different errors on the same images?

Predictions are matched on the ``path`` column. Models evaluated on different test images are
refused, since McNemar's test is only valid for paired observations. The exact binomial test is
used when fewer than 25 images are classified differently (b + c < 25), the continuity-corrected
chi-square otherwise (statsmodels' ``mcnemar``).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from statsmodels.stats.contingency_tables import mcnemar

from triptych.errors import TriptychError
from triptych.evaluation.predictions import read_predictions_csv, validate_predictions
from triptych.rundir import RunDir

EXACT_BELOW = 25


def mcnemar_test(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """McNemar on two aligned boolean "was this image classified correctly" arrays.

    ``b`` counts images only A got right, ``c`` images only B got right.
    """
    a, b_ = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    table = [[int(np.sum(a & b_)), int(np.sum(a & ~b_))], [int(np.sum(~a & b_)), int(np.sum(~a & ~b_))]]
    b, c = table[0][1], table[1][0]
    exact = b + c < EXACT_BELOW
    result = mcnemar(table, exact=exact, correction=True)
    return {"n": int(a.size), "b": b, "c": c, "statistic": float(result.statistic),
            "p_value": float(result.pvalue), "exact": exact}


def mcnemar_frames(frames: Mapping[str, pd.DataFrame]) -> list[dict[str, Any]]:
    """McNemar for every pair of named predictions tables (order of ``frames``)."""
    correct = {name: _correct_by_path(name, frame) for name, frame in frames.items()}
    results = []
    for name_a, name_b in itertools.combinations(correct, 2):
        a, b = _aligned(name_a, correct[name_a], name_b, correct[name_b])
        results.append({"model_a": name_a, "model_b": name_b, **mcnemar_test(a, b)})
    return results


def mcnemar_pairwise(run_dirs: Iterable[str | Path | RunDir]) -> list[dict[str, Any]]:
    """McNemar for every pair of runs, from their ``predictions.csv``.

    Each result holds ``model_a`` / ``model_b`` (display names: the model, plus the experiment
    name where that differs), ``experiment_a`` / ``experiment_b``, ``n``, ``b``, ``c``,
    ``statistic``, ``p_value`` and ``exact``.
    """
    runs = [r if isinstance(r, RunDir) else RunDir(Path(r)) for r in run_dirs]
    if len({r.name for r in runs}) != len(runs):
        raise TriptychError("two run directories share a name: " + ", ".join(str(r.root) for r in runs))
    names = display_names({r.name: _model_name(r) for r in runs})
    frames = {names[r.name]: read_predictions_csv(r.predictions) for r in runs}
    experiments = {names[r.name]: r.name for r in runs}
    results = mcnemar_frames(frames)
    for row in results:
        row["experiment_a"] = experiments[row["model_a"]]
        row["experiment_b"] = experiments[row["model_b"]]
    return results


def _model_name(run: RunDir) -> str:
    record = run.read_record()
    return record.model if record else run.name


def display_names(models: Mapping[str, str]) -> dict[str, str]:
    """Experiment name -> unique label: the model name, or "model (experiment)" when two runs
    share a model (e.g. two seeds)."""
    counts = Counter(models.values())
    return {exp: m if counts[m] == 1 else f"{m} ({exp})" for exp, m in models.items()}


def _correct_by_path(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    p = validate_predictions(frame)
    table = pd.DataFrame({"y_true": np.asarray(p.class_names)[p.y_true], "correct": p.correct}, index=p.paths)
    duplicated = table.index[table.index.duplicated()].unique()
    if len(duplicated):
        raise TriptychError(f"{name}: {len(duplicated)} test path(s) appear more than once (e.g. {duplicated[0]}); "
                            "cannot pair predictions by path")
    return table


def _aligned(name_a: str, a: pd.DataFrame, name_b: str, b: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    only_a, only_b = a.index.difference(b.index), b.index.difference(a.index)
    if len(only_a) or len(only_b):
        example = (list(only_a[:1]) + list(only_b[:1]))[0]
        raise TriptychError(
            f"{name_a} and {name_b} were not evaluated on the same test images "
            f"({len(only_a)} only in {name_a}, {len(only_b)} only in {name_b}, e.g. {example}); "
            "McNemar's test needs paired predictions"
        )
    b = b.loc[a.index]
    mismatch = a["y_true"].to_numpy() != b["y_true"].to_numpy()
    if mismatch.any():
        raise TriptychError(f"{name_a} and {name_b} disagree on the true class of {int(mismatch.sum())} image(s) "
                            f"(e.g. {a.index[mismatch][0]}); they were not evaluated on the same labelled test set")
    return a["correct"].to_numpy(), b["correct"].to_numpy()
