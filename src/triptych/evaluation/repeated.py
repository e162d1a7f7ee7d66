"""Two models trained several times each (``repeats: N``): mean ± sd, and a test over the repeats.

The repeats of two models are paired by seed. Which test is valid depends on the splits:

- **Same split for every repeat** (the default): the repeats differ only in training randomness
  (initialisation, shuffling, augmentation), so the per-seed differences ``d_i = a_i - b_i`` are
  independent draws and the ordinary **paired t-test** over seeds applies (Student 1908; e.g.
  Dietterich 1998, "Approximate statistical tests for comparing supervised classification learning
  algorithms", Neural Computation 10(7)). It answers "is A better than B *on this split*, beyond
  training noise?" -- not whether A is better on other data drawn like it.
- **A new split per seed** (``resplit: true``): the training sets of different repeats overlap, so
  the ``d_i`` are correlated and the paired t-test's variance is too small (Dietterich 1998 shows
  its inflated type I error). The **corrected resampled t-test** of Nadeau and Bengio (2003,
  "Inference for the generalization error", Machine Learning 52(3):239-281) inflates the variance
  of the mean difference from ``s²/J`` to ``(1/J + n_test/n_train) s²`` (J repeats), with J - 1
  degrees of freedom (as recommended by Bouckaert and Frank 2004, "Evaluating the replicability
  of significance tests for comparing learning algorithms", PAKDD).

Both are two-sided. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from triptych.errors import InvalidArgumentError

PAIRED_T = "paired t-test over seeds (every repeat on the same split)"
# Differences closer than this are equal: float noise (e.g. 0.1 - 0.1 computed two ways) must not
# become a tiny variance and an absurdly "significant" t.
SAME_DIFFERENCE = 1e-12
CORRECTED_T = "corrected resampled t-test (Nadeau & Bengio 2003; a new split per seed)"


@dataclass(frozen=True)
class RepeatScore:
    """One repeat's test score and the split it was trained and tested on."""

    seed: int
    score: float  # e.g. test accuracy
    split: str  # fingerprint of the train/val/test split: equal fingerprints, same split
    n_train: int
    n_test: int


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); the sd is ``None`` for fewer than 2 values."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise InvalidArgumentError("values must hold at least one number")
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else None


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Two-sided paired t-test of ``a - b`` (aligned, e.g. by seed)."""
    return _t_test(_differences(a, b), variance_factor=None)


def corrected_resampled_t_test(a: Sequence[float], b: Sequence[float], n_train: float, n_test: float) -> dict[str, Any]:
    """Nadeau and Bengio's corrected resampled t-test of ``a - b`` over J random train/test splits:
    ``t = mean(d) / sqrt((1/J + n_test/n_train) * var(d))``, J - 1 degrees of freedom."""
    if n_train <= 0 or n_test <= 0:
        raise InvalidArgumentError(f"n_train and n_test must be positive, got {n_train} and {n_test}")
    d = _differences(a, b)
    return _t_test(d, variance_factor=1 / d.size + n_test / n_train)


def _differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise InvalidArgumentError(f"a and b must be aligned 1-d sequences, got shapes {a.shape} and {b.shape}")
    if a.size < 2:
        raise InvalidArgumentError(f"a t-test over repeats needs at least 2 pairs, got {a.size}")
    return a - b


def _t_test(d: np.ndarray, variance_factor: float | None) -> dict[str, Any]:
    """t = mean(d) / sqrt(factor * var(d)); the plain paired test has factor 1/n."""
    n, mean, variance = d.size, float(d.mean()), float(d.var(ddof=1))
    factor = 1 / n if variance_factor is None else variance_factor
    df = n - 1
    if np.ptp(d) <= SAME_DIFFERENCE:  # every difference equal: no spread to test against
        statistic = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        p_value = 1.0 if mean == 0 else 0.0
    else:
        statistic = mean / math.sqrt(factor * variance)
        p_value = float(2 * stats.t.sf(abs(statistic), df))
    return {"n": n, "mean_diff": mean, "sd_diff": math.sqrt(variance), "statistic": statistic, "df": df,
            "p_value": p_value}


def compare_repeats(a: Sequence[RepeatScore], b: Sequence[RepeatScore]) -> dict[str, Any]:
    """The test between two models' repeats, paired by seed, chosen by their splits (see the module).

    Returns the test's name and numbers (:func:`paired_t_test`), ``seeds`` paired, and ``error``
    (``None``, or why no test is valid: fewer than 2 shared seeds, or a seed whose two runs used
    different splits).
    """
    by_seed_a, by_seed_b = {r.seed: r for r in a}, {r.seed: r for r in b}
    seeds = sorted(set(by_seed_a) & set(by_seed_b))
    result: dict[str, Any] = {"test": None, "seeds": seeds, "error": None}
    if len(seeds) < 2:
        result["error"] = f"needs at least 2 seeds trained with both models, found {len(seeds)}"
        return result
    unpaired = [s for s in seeds if by_seed_a[s].split != by_seed_b[s].split]
    if unpaired:
        result["error"] = f"seed {unpaired[0]}: the two models were trained and tested on different splits"
        return result
    pa, pb = [by_seed_a[s] for s in seeds], [by_seed_b[s] for s in seeds]
    scores_a, scores_b = [r.score for r in pa], [r.score for r in pb]
    if len({r.split for r in pa}) == 1:
        return {**result, "test": PAIRED_T, **paired_t_test(scores_a, scores_b)}
    n_train, n_test = np.mean([r.n_train for r in pa]), np.mean([r.n_test for r in pa])
    test = corrected_resampled_t_test(scores_a, scores_b, n_train, n_test)
    return {**result, "test": CORRECTED_T, "n_train": float(n_train), "n_test": float(n_test), **test}
