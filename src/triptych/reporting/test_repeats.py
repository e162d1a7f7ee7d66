"""The repeats in comparison.json and report.html, from synthetic run directories (no training)."""

import json

import numpy as np
import pytest
from scipy import stats

from tests.fixtures.synthetic_runs import write_synthetic_run
from triptych.evaluation.repeated import CORRECTED_T, PAIRED_T
from triptych.reporting import build_report
from triptych.reporting.comparison import write_comparison

SEEDS = (0, 1, 2)


def _data(split: str) -> dict:
    return {"origin": "synthetic", "train": 90, "val": 10, "test": 300,
            "fingerprint": {"train": f"tr{split}", "val": f"va{split}", "test": f"te{split}"}}


def _repeats(root, resplit: bool = False, seeds=SEEDS, single: bool = True):
    for seed in seeds:
        data = _data(str(seed) if resplit else "fixed")
        write_synthetic_run(root, f"scratch@s{seed}", model="resnet18", skill=1.0, seed=seed, record={"data": data})
        write_synthetic_run(root, f"tuned@s{seed}", model="xception", skill=2.0, seed=seed + 10, record={"data": data})
    if single:
        write_synthetic_run(root, "single", model="densenet121", skill=1.5, seed=7)  # not a repeat: no group
    return root


def _accuracies(root, name, seeds=SEEDS):
    return [json.loads((root / f"{name}@s{s}" / "metrics.json").read_text())["accuracy"] for s in seeds]


def test_comparison_has_mean_sd_every_run_and_the_paired_test(tmp_path):
    root = _repeats(tmp_path)
    repeats = write_comparison([root], tmp_path / "comparison.json")["repeats"]
    groups = {g["experiment"]: g for g in repeats["groups"]}
    assert set(groups) == {"scratch", "tuned"}
    scratch, tuned = _accuracies(root, "scratch"), _accuracies(root, "tuned")
    assert groups["scratch"]["n"] == 3 and [r["seed"] for r in groups["scratch"]["runs"]] == list(SEEDS)
    assert groups["scratch"]["accuracy"]["mean"] == pytest.approx(np.mean(scratch))
    assert groups["scratch"]["accuracy"]["sd"] == pytest.approx(np.std(scratch, ddof=1))
    (test,) = repeats["tests"]
    assert test["test"] == PAIRED_T and test["seeds"] == list(SEEDS)
    reference = stats.ttest_rel(scratch, tuned)  # scipy's own paired t-test, an independent reference
    assert test["statistic"] == pytest.approx(reference.statistic)
    assert test["p_value"] == pytest.approx(reference.pvalue)
    assert test["p_holm"] == pytest.approx(reference.pvalue)  # one pair: nothing to adjust


def test_resplit_repeats_get_the_corrected_resampled_test(tmp_path):
    root = _repeats(tmp_path, resplit=True)
    (test,) = write_comparison([root], tmp_path / "comparison.json")["repeats"]["tests"]
    d = np.subtract(_accuracies(root, "scratch"), _accuracies(root, "tuned"))
    t = d.mean() / np.sqrt((1 / 3 + 300 / 90) * d.var(ddof=1))
    assert test["test"] == CORRECTED_T and test["statistic"] == pytest.approx(t)
    assert test["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), 2))


def test_report_shows_the_repeats_section(tmp_path):
    root = _repeats(tmp_path, seeds=(0, 1), single=False)  # rendering figures is slow: 4 runs
    html = build_report([root], tmp_path / "report.html").read_text()
    assert "Repeats: mean ± sd over seeds" in html and PAIRED_T in html
    tuned = _accuracies(root, "tuned", seeds=(0, 1))
    mean, sd = np.mean(tuned), np.std(tuned, ddof=1)
    assert f"{mean:.3f} ± {sd:.3f}" in html


def test_single_runs_have_no_repeats_key(out_dir, tmp_path):
    data = write_comparison([out_dir], tmp_path / "comparison.json")
    assert "repeats" not in data
