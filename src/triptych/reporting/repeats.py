"""The repeats of each model (run directories ``<experiment>@s<seed>``): mean ± sd, every run, and
a test between every two repeated models (:func:`triptych.evaluation.repeated.compare_repeats`:
a paired t-test over seeds on one split, the Nadeau-Bengio corrected resampled t-test over
resplits), Holm-adjusted over the pairs. Part of ``comparison.json`` (key ``repeats``) when a
report holds repeats. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import itertools
from typing import Any

from statsmodels.stats.multitest import multipletests

from triptych.evaluation.repeated import RepeatScore, compare_repeats, mean_sd
from triptych.repeats import repeat_of
from triptych.reporting import format as fmt
from triptych.reporting.runs import RunView

METRIC = "accuracy"  # the test compares test accuracy; macro F1 is summarised beside it
SUMMARISED = ("accuracy", "macro_f1")


def repeats_summary(finished: list[RunView], alpha: float) -> dict[str, Any] | None:
    """Mean ± sd per repeated model and the tests between them; ``None`` when no run is a repeat."""
    groups: dict[str, list[tuple[int, RunView]]] = {}
    for view in finished:
        repeat = repeat_of(view.run.name)
        if repeat is not None:
            groups.setdefault(repeat[0], []).append((repeat[1], view))
    if not groups:
        return None
    for runs in groups.values():
        runs.sort(key=lambda pair: pair[0])
    return {
        "metric": METRIC,
        "alpha": alpha,
        "groups": [_group(name, runs) for name, runs in groups.items()],
        "tests": _tests(groups, alpha),
    }


def _group(name: str, runs: list[tuple[int, RunView]]) -> dict[str, Any]:
    """One repeated model: mean and sample sd of each summarised metric, and every run."""
    row: dict[str, Any] = {"experiment": name, "model": runs[0][1].model, "n": len(runs)}
    for key in SUMMARISED:
        values = [view.metrics[key] for _, view in runs if view.metrics.get(key) is not None]
        row[key] = dict(zip(("mean", "sd"), mean_sd(values))) if values else {"mean": None, "sd": None}
    row["runs"] = [{"experiment": view.run.name, "seed": seed, **{k: view.metrics.get(k) for k in SUMMARISED}}
                   for seed, view in runs]
    return row


def _tests(groups: dict[str, list[tuple[int, RunView]]], alpha: float) -> list[dict[str, Any]]:
    """Every pair of repeated models, with Holm-adjusted p-values over the pairs tested."""
    tests = []
    for name_a, name_b in itertools.combinations(groups, 2):
        scores_a, scores_b = _scores(groups[name_a]), _scores(groups[name_b])
        tests.append({"experiment_a": name_a, "experiment_b": name_b, **compare_repeats(scores_a, scores_b)})
    tested = [t for t in tests if t["error"] is None]
    if tested:
        for test, adjusted in zip(tested, multipletests([t["p_value"] for t in tested], method="holm")[1]):
            test["p_holm"] = float(adjusted)
            test["significant"] = float(adjusted) < alpha
    return tests


def _scores(runs: list[tuple[int, RunView]]) -> list[RepeatScore]:
    """The repeats that recorded their score and split (older records without data are left out)."""
    scores = []
    for seed, view in runs:
        data, score = view.record.data, view.metrics.get(METRIC)
        if data is None or score is None:
            continue
        split = "/".join((data.fingerprint.train, data.fingerprint.val, data.fingerprint.test))
        scores.append(RepeatScore(seed, float(score), split, data.train, data.test))
    return scores


# --- for the report ----------------------------------------------------------------------------


def mean_sd_cell(summary: dict[str, Any]) -> fmt.Cell:
    """``0.812 ± 0.014`` (sample sd); the mean alone when there is one run."""
    if summary["mean"] is None:
        return fmt.na("not recorded")
    sd = "" if summary["sd"] is None else f" ± {summary['sd']:.3f}"
    return fmt.Cell(f"{summary['mean']:.3f}{sd}", css="num", title="mean ± sample standard deviation over the repeats")


def repeats_view(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """The repeats table and tests for the report template; ``None`` without repeats."""
    if summary is None:
        return None
    groups = [{
        "experiment": g["experiment"], "model": g["model"], "n": g["n"],
        **{key: mean_sd_cell(g[key]) for key in SUMMARISED},
        "runs": ", ".join(f"{r['accuracy']:.3f} (seed {r['seed']})" for r in g["runs"] if r["accuracy"] is not None),
    } for g in summary["groups"]]
    tests = [{
        "a": t["experiment_a"], "b": t["experiment_b"], "error": t["error"], "test": t["test"],
        "seeds": len(t["seeds"]),
        **({} if t["error"] else {
            "mean_diff": fmt.number(t["mean_diff"], 4), "statistic": fmt.number(t["statistic"], 3), "df": t["df"],
            "p": fmt.p_value(t["p_value"]), "p_holm": fmt.p_value(t["p_holm"]), "significant": t["significant"]}),
    } for t in summary["tests"]]
    return {"groups": groups, "tests": tests, "alpha": summary["alpha"], "metric": summary["metric"]}
