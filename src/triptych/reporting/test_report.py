"""The HTML report and ``triptych report``, from synthetic run directories."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from triptych.errors import TriptychError
from triptych.evaluation.synthetic import ART_CLASSES, write_synthetic_run
from triptych.reporting import build_report
from triptych.reporting.report import _mcnemar, load_run, resolve_runs

SRC = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    write_synthetic_run(root, "resnet50_scratch", model="resnet50", skill=1.0, seed=1)
    # no metrics.json (the report computes it) and random weights where pretrained ones were expected
    write_synthetic_run(root, "xception_ft", model="xception", skill=2.2, seed=2, evaluate=False,
                        manifest={"weights": "random", "expected_pretrained": True})
    write_synthetic_run(root, "crashed", model="resnet18", status="failed", manifest={"reason": "CUDA out of memory"})
    write_synthetic_run(root, "busy", model="resnet34", status="running")
    return root


@pytest.fixture(scope="module")
def html(out_dir) -> str:
    path = build_report([out_dir], out_dir / "report.html", title="Art styles")
    assert path == out_dir / "report.html"
    return path.read_text(encoding="utf-8")


def visible_text(html: str) -> str:
    """Text outside tags, images and <pre> blocks (the raw manifest JSON may say null)."""
    html = re.sub(r"<pre>.*?</pre>", "", re.sub(r'src="data:[^"]+"', "", html), flags=re.S)
    return re.sub(r"<[^>]+>", " ", html)


def test_report_has_a_section_per_finished_model_and_comparison(html):
    for model in ("resnet50", "xception"):
        assert f">{model} <span class=\"sub\">" in html
    assert 'id="comparison"' in html and "McNemar" in html
    for cls in ART_CLASSES:
        assert f"<th>{cls}</th>" in html
    assert html.count('src="data:image/png;base64,') == 2 * 7 + 2
    assert "Macro-average ROC curves of all models" in html and "Validation accuracy of all models" in html


def test_unfinished_runs_are_listed_not_read(out_dir, html):
    assert "failed (CUDA out of memory)" in html and ">running<" in html
    assert 'id="run-crashed"' not in html and 'id="run-busy"' not in html
    # the failed run has a predictions.csv, but it must not be evaluated as if finished
    assert not (out_dir / "crashed" / "metrics.json").exists()
    assert "resnet18" not in html.split('id="comparison"')[1]


def test_missing_metrics_json_is_computed(out_dir, html):
    metrics = json.loads((out_dir / "xception_ft" / "metrics.json").read_text())
    assert metrics["model"] == "xception" and metrics["params"] is None
    assert f"{metrics['accuracy']:.3f}" in html


def test_random_weights_where_pretrained_expected_is_red(html):
    section = html.split('id="run-xception-ft"')[1].split("<section")[0]
    assert 'class="warning">Weights: pretrained weights were expected' in section
    assert '<td class="status-bad">random</td>' in section


def test_mcnemar_sentence_and_table(html):
    assert "Significant at 0.05" in html and "makes fewer errors than resnet50" in html
    assert html.count("exact binomial") + html.count(">chi-square<") == 1  # one pair, one test


def test_self_contained_no_network_no_script(html):
    assert "<script" not in html
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<link" not in html
    text = visible_text(html)
    assert not re.search(r"\b(nan|NaN|None|null)\b", text)


def test_plots_are_saved_beside_runs_and_report(out_dir, html):
    assert (out_dir / "xception_ft" / "plots" / "confusion_matrix.svg").is_file()
    assert (out_dir / "xception_ft" / "plots" / "roc.png").is_file()
    assert (out_dir / "report_plots" / "comparison_roc.svg").is_file()
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".report")]  # atomic write left nothing


def test_undefined_values_show_na_with_reason(tmp_path, monkeypatch):
    monkeypatch.setattr("triptych.reporting.report.run_figures", lambda *a: {})  # tables only: fast
    run = write_synthetic_run(tmp_path, "solo", model="resnet50", evaluate=False)
    preds = pd.read_csv(run.predictions)
    preds = preds[preds["y_true"] != "Expressionism"]  # no test example of one class
    preds.to_csv(run.predictions, index=False)
    html = build_report([run.root], tmp_path / "r.html").read_text()
    assert '<abbr title="no test example of class Expressionism, so its ROC AUC is undefined">n/a</abbr>' in html
    assert "macro ROC AUC averages only the 2 of 3 classes" in html
    assert "Needs at least two finished models" in html


def test_mcnemar_refusal_is_shown_not_fatal(tmp_path):
    runs = [write_synthetic_run(tmp_path, name, n_test=n, evaluate=False) for name, n in (("a", 100), ("b", 120))]
    views = [load_run(r) for r in runs]
    for view in views:
        view.label = view.run.name
    result = _mcnemar(views)
    assert result["rows"] == [] and "not evaluated on the same test images" in result["error"]


def test_stale_metrics_are_recomputed_keeping_trainer_fields(tmp_path):
    run = write_synthetic_run(tmp_path, "r", n_test=80, seed=4)
    pd.read_csv(run.predictions).iloc[:50].to_csv(run.predictions, index=False)
    later = run.metrics.stat().st_mtime + 10
    os.utime(run.predictions, (later, later))
    view = load_run(run)
    assert view.metrics["n_test"] == 50 and view.metrics["params"] == 1_000_004
    assert json.loads(run.metrics.read_text())["n_test"] == 50


def test_done_run_without_any_results_is_listed_as_a_problem(tmp_path):
    run = write_synthetic_run(tmp_path, "r", evaluate=False)
    run.predictions.unlink()
    view = load_run(run)
    assert not view.finished and "neither metrics.json nor predictions.csv" in view.problems[0]
    run.metrics.write_text('{"accuracy": 0.5}')
    view = load_run(run)
    assert not view.finished and "metrics.json lacks class_names" in view.problems[0]


def test_done_run_with_broken_predictions_is_not_read_as_finished(tmp_path):
    run = write_synthetic_run(tmp_path, "r", evaluate=False)
    preds = pd.read_csv(run.predictions)
    preds.loc[0, "prob_Romanticism"] = float("nan")
    preds.to_csv(run.predictions, index=False)
    view = load_run(run)
    assert not view.finished and "1 row(s) have NaN" in view.problems[0]


def test_resolve_runs_accepts_experiment_dirs_and_output_dirs(out_dir):
    names = [r.name for r in resolve_runs([out_dir])]
    assert names == ["busy", "crashed", "resnet50_scratch", "xception_ft"]
    assert [r.name for r in resolve_runs([out_dir / "xception_ft", out_dir / "busy"])] == ["xception_ft", "busy"]


@pytest.mark.parametrize("problem", ["missing", "empty", "file"])
def test_bad_dir_is_a_one_line_error(tmp_path, problem):
    target = tmp_path / "x"
    if problem == "empty":
        target.mkdir()
    elif problem == "file":
        target.write_text("not a dir")
    with pytest.raises(TriptychError) as err:
        build_report([target], tmp_path / "r.html")
    assert "\n" not in str(err.value) and str(target) in str(err.value)


# --- CLI -------------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    from triptych.cli import report

    parser = argparse.ArgumentParser(prog="triptych")
    sub = report.register(parser.add_subparsers(dest="command"), "report", "Build report.html")
    sub.set_defaults(_execute=report.execute)
    return parser.parse_args(argv)


def test_cli_writes_default_report_and_prints_path(tmp_path, capsys):
    run = write_synthetic_run(tmp_path, "one", model="xception", status="running")  # no figures: fast
    args = parse(["report", str(run.root)])
    assert args._execute(args) == 0
    assert capsys.readouterr().out.strip() == str(run.root / "report.html")
    assert (run.root / "report.html").is_file()


def test_cli_needs_out_with_several_dirs_and_rejects_bad_dir(tmp_path):
    args = parse(["report", str(tmp_path), str(tmp_path)])
    with pytest.raises(TriptychError, match="--out"):
        args._execute(args)
    args = parse(["report", str(tmp_path / "nope")])
    with pytest.raises(TriptychError, match="not a directory"):
        args._execute(args)


def _missing_command_modules() -> list[str]:
    from triptych.cli.main import COMMANDS

    return [n for n in COMMANDS if not (SRC / "triptych" / "cli" / f"{n.replace('-', '_')}.py").exists()]


@pytest.mark.skipif(bool(_missing_command_modules()), reason="some cli/<command>.py listed in COMMANDS is not written yet")
def test_cli_through_main_reports_error_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "triptych", "report", str(tmp_path / "nope")],
                            capture_output=True, text=True, env={"PYTHONPATH": str(SRC), "PATH": ""}, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not a directory" in result.stderr
