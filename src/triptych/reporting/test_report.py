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
from markupsafe import escape as html_escape

from tests.fixtures.synthetic_runs import ART_CLASSES, write_synthetic_run
from triptych.errors import TriptychError
from triptych.evaluation import run_metrics
from triptych.models.profile import load_cards
from triptych.reporting import build_report
from triptych.reporting.comparison import PUBLISHED_IMAGES, ROW_KEYS, mcnemar_summary, write_comparison
from triptych.reporting.conftest import WEIGHTS_NOTE
from triptych.reporting.report import _mcnemar, _mcnemar_view
from triptych.reporting.runs import RunView, load_run, resolve_runs

SRC = Path(__file__).resolve().parents[2]
CARDS = load_cards()  # what the report must show, as models/cards.yaml says it
PUBLISHED = CARDS["published"]
PUBLISHED_TITLE = (f"{PUBLISHED['label']} ({PUBLISHED['source']}: {PUBLISHED_IMAGES}, "
                   f"{PUBLISHED['test_images']:,}-image test set)")

# out_dir and report_path (one shared report of synthetic runs) come from conftest.py.


@pytest.fixture(scope="module")
def html(report_path) -> str:
    return report_path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def comparison(report_path) -> dict:
    return json.loads((report_path.parent / "comparison.json").read_text(encoding="utf-8"))


def section(html: str, anchor: str) -> str:
    return html.split(f'id="{anchor}"')[1].split("<section")[0]


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
    # per model: 7 figures and 2 Grad-CAM overlays; 2 comparison figures; 3 diagrams (resnet50,
    # xception, xception_separable): all PNG
    assert html.count('src="data:image/png;base64,') == 2 * (7 + 2) + 2 + 3
    assert 'src="data:image/svg+xml' not in html
    assert "Macro-average ROC curves of all models" in html and "Validation accuracy of all models" in html


def test_unfinished_runs_are_listed_not_read(out_dir, html):
    assert "failed (CUDA out of memory)" in html and ">running<" in html
    assert 'id="run-crashed"' not in html and 'id="run-busy"' not in html
    # the failed run has a predictions.csv, but it must not be evaluated as if finished
    assert not (out_dir / "crashed" / "metrics.json").exists()
    assert "resnet18" not in html.split('id="comparison"')[1]


def test_missing_metrics_json_is_computed_not_written(out_dir, html):
    metrics = run_metrics(out_dir / "xception_ft")
    assert metrics["model"] == "xception" and metrics["params"] is None
    assert f"{metrics['accuracy']:.3f}" in html
    assert not (out_dir / "xception_ft" / "metrics.json").exists()  # a report only reads run directories


def test_report_writes_nothing_into_run_directories(tmp_path):
    runs = [write_synthetic_run(tmp_path / "out", name, n_test=60, seed=k, evaluate=k == 0, extras=True)
            for k, name in enumerate(("a", "b"))]
    before = {p: p.stat().st_mtime_ns for run in runs for p in run.root.rglob("*")}
    build_report([tmp_path / "out"], tmp_path / "out" / "report.html")
    after = {p: p.stat().st_mtime_ns for run in runs for p in run.root.rglob("*")}
    assert after == before
    assert (tmp_path / "out" / "report_plots" / "a" / "roc.png").is_file()


def test_random_weights_where_pretrained_expected_is_red(html):
    xception = section(html, "run-xception-ft")
    assert 'class="warning">Weights: pretrained weights were expected' in xception
    assert f"Why: {WEIGHTS_NOTE}" in xception  # the trainer's reason, in the red box
    assert '<td class="status-bad">random</td>' in xception
    # a from-scratch ResNet was meant to be random: no warning
    assert 'class="warning">Weights' not in section(html, "run-resnet50-scratch")
    measured = html.split('class="wide measured"')[1].split("</table>")[0]
    assert measured.count('class="weights status-bad"') == 1


def test_comparison_json_has_every_key_for_every_model(out_dir, comparison):
    assert [r["experiment"] for r in comparison["rows"]] == ["resnet50_scratch", "xception_ft"]
    for row in comparison["rows"]:
        assert tuple(row) == ROW_KEYS
        assert all(row[k] is not None for k in ROW_KEYS if k != "weights_note"), row
        assert row["flops"] == 2 * row["macs"] and row["gmacs"] == round(row["macs"] / 1e9, 3)
        assert isinstance(row["pros"], list) and row["pros"]
    resnet, xception = comparison["rows"]
    assert (resnet["model"], resnet["family"], resnet["image_size"], resnet["weights"]) == ("resnet50", "resnet", 224, "random")
    assert xception["weights_note"] == WEIGHTS_NOTE and xception["peak_memory_mb"] == 3500.0
    assert xception["throughput"] == 230.0 and xception["latency_ms"] == 14.2
    assert xception["architecture"] == CARDS["families"]["xception"]["architecture"]
    (pair,) = comparison["mcnemar"]["pairs"]
    assert {pair["experiment_a"], pair["experiment_b"]} == {"resnet50_scratch", "xception_ft"}
    assert 0 <= pair["p_value"] <= pair["p_holm"] <= 1 and pair["significant"] is True
    published = comparison["published"]
    assert published["title"] == PUBLISHED_TITLE and published["comparable_with_our_rows"] is False
    assert {r["model"]: r["accuracy"] for r in published["rows"]} == PUBLISHED["results"]


def test_comparison_json_without_optional_inputs_is_null_not_missing(tmp_path):
    run = write_synthetic_run(tmp_path, "plain", model="densenet121", n_test=60)  # no profile.json, no extras
    write_synthetic_run(tmp_path, "busy", status="running")
    data = write_comparison([tmp_path], tmp_path / "comparison.json")
    assert json.loads((tmp_path / "comparison.json").read_text()) == json.loads(json.dumps(data))
    (row,) = data["rows"]
    assert tuple(row) == ROW_KEYS and row["experiment"] == run.name
    assert row["family"] == "densenet" and row["best_use_case"]  # family from the registry
    for key in ("macs", "gmacs", "flops", "latency_ms", "throughput", "peak_memory_mb", "image_size"):
        assert row[key] is None, key
    assert row["params"] == 1_000_000  # from metrics.json when there is no profile.json
    assert data["mcnemar"]["pairs"] == [] and "at least two" in data["mcnemar"]["error"]


def test_measured_table_has_costs_and_marks_the_best(html, comparison):
    measured = html.split('class="wide measured"')[1].split("</table>")[0]
    for header in ("GFLOPs / image", "latency (ms)", "throughput (img/s)", "peak memory (MB)", "image size", "weights"):
        assert header in measured
    resnet = comparison["rows"][0]
    # resnet50: fewer FLOPs, lower latency and memory, more throughput; xception: fewer parameters
    assert f'class="num best" title="{resnet["gmacs"]:.3f} G multiply-adds per image at 224×224' in measured
    assert '<td class="num best" title="median of batch-1 predictions on GPU (1)">9.8</td>' in measured
    assert '<td class="num best" title="images per second at batch 32 on GPU (1)">410</td>' in measured
    assert '<td class="num best" title="peak resident memory (RSS) of the training process, MB">3,250</td>' in measured
    assert '<td class="num best" title="20,870,002 parameters">20.9 M</td>' in measured
    assert "299×299" in measured


def test_qualitative_cards_and_published_reference(html):
    comparison_section = section(html, "comparison")
    cards = comparison_section.split('class="cards"')[1].split("</table>")[0]
    assert cards.count("<tr>") == 3  # header + resnet + xception
    for family in ("resnet", "xception"):
        card = CARDS["families"][family]
        assert html_escape(card["key_innovation"]) in cards and html_escape(card["best_use_case"]) in cards
        assert all(f"<li>{html_escape(pro)}</li>" in cards for pro in card["pros"])
    reference = comparison_section.split('class="reference"')[1]
    assert PUBLISHED_TITLE[0].upper() + PUBLISHED_TITLE[1:] in reference
    assert "not our results" in reference
    for model, value in PUBLISHED["results"].items():
        assert f"<td>{model}</td>" in reference and f">{value:.2f}<" in reference
    # the published numbers are never inside our measured table
    measured = comparison_section.split('class="wide measured"')[1].split("</table>")[0]
    assert f"{PUBLISHED['results']['densenet121']:.2f}" not in measured and "published" not in measured


def test_model_sections_show_diagrams_gradcam_and_run_notes(html):
    xception = section(html, "run-xception-ft")
    diagrams = xception.split('<div class="diagrams">')[1].split("</div>")[0]
    assert diagrams.count('<img src="data:image/png;base64,') == 2
    assert "Architecture of xception, drawn from the built model graph (diagrams/xception.png)" in xception
    assert "Architecture of xception: separable, drawn from the built model graph" in xception
    gallery = xception.split("Grad-CAM: most confident mistakes")[1]
    assert gallery.count('<img src="data:image/png;base64,') == 2
    assert "predicted <span class=\"wrong\">" in gallery and "(p = 0." in gallery and "stage4_block3_out" in gallery
    assert 'class="caution">Data: data/wikiart not found: fell back to cifar10' in xception
    assert '<th>feature cache</th><td class="">computed, train features 900×2,048 (float16, 1 view, 12.5 s)</td>' in xception
    assert '<th>phases done</th><td class="">head, fine-tune</td>' in xception
    assert "synthetic: 900 train / 100 val / 300 test images" in xception
    assert "Model profile" in xception and "GPU (1)" in xception
    resnet = section(html, "run-resnet50-scratch")
    assert "(diagrams/resnet50.png)" in resnet and "xception" not in resnet.split("Figures")[0]


def test_diagram_svg_is_the_fallback_and_wide_drawings_get_a_row(tmp_path):
    from tests.fixtures.synthetic_runs import tiny_png, tiny_svg
    from triptych.reporting.report import _diagrams

    view = load_run(write_synthetic_run(tmp_path / "out", "d", model="densenet121", evaluate=False, status="running"))
    folder = tmp_path / "out" / "diagrams"
    folder.mkdir()
    (folder / "densenet121.svg").write_text(tiny_svg("densenet121"))  # 460 x 120: wide
    (folder / "densenet121_extra.png").write_bytes(tiny_png(20, 40))  # tall
    (folder / "densenet1210.png").write_bytes(tiny_png())  # another model's name: not shown
    figures = _diagrams(view, [tmp_path / "nowhere", folder])
    assert [f.data_uri.split(";")[0] for f in figures] == ["data:image/svg+xml", "data:image/png"]
    assert [f.wide for f in figures] == [True, False]
    assert "densenet121: extra" in figures[1].caption


def test_mcnemar_sentence_and_table(html):
    assert html_escape("Significant at 0.05 (McNemar's test, p-values Holm-adjusted") in html
    assert "makes fewer errors than resnet50 (Holm-adjusted p" in html
    assert html.count("exact binomial") + html.count(">chi-square<") == 1  # one pair, one test


def test_significance_is_judged_on_holm_adjusted_p_values(tmp_path):
    # a and c are right on the same images; b is wrong on 9 of them and right on 1 they miss:
    # a-b and c-b have an exact McNemar p = 2 * 11/1024 = 0.021 each, Holm over 3 pairs gives 0.064.
    right = {"a": [0] * 1 + [1] * 39, "b": [1] * 1 + [0] * 9 + [1] * 30, "c": [0] * 1 + [1] * 39}
    views = []
    for name, correct in right.items():
        run = write_synthetic_run(tmp_path, name, evaluate=False)
        prob_x = [0.9 if ok else 0.1 for ok in correct]
        pd.DataFrame({"path": [f"img{i:02d}.jpg" for i in range(40)], "y_true": "x",
                      "y_pred": ["x" if ok else "y" for ok in correct],
                      "prob_x": prob_x, "prob_y": [1 - p for p in prob_x]}).to_csv(run.predictions, index=False)
        views.append(RunView(run=run, label=name, record=run.read_record(), metrics={}))
    summary = mcnemar_summary(views)
    pairs = {(p["model_a"], p["model_b"]): p for p in summary["pairs"]}
    for key in (("a", "b"), ("b", "c")):
        assert pairs[key]["p_value"] < 0.05 < pairs[key]["p_holm"] and pairs[key]["significant"] is False
    sentence = _mcnemar_view(summary)["sentence"]
    assert sentence.startswith("No difference between the models is significant at 0.05") and "Holm-adjusted" in sentence


def test_self_contained_no_network_no_script(html):
    assert "<script" not in html
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<link" not in html
    text = visible_text(html)
    assert not re.search(r"\b(nan|NaN|None|null)\b", text)


def test_plots_are_saved_beside_the_report(out_dir, html):
    assert (out_dir / "report_plots" / "xception_ft" / "confusion_matrix.svg").is_file()
    assert (out_dir / "report_plots" / "xception_ft" / "roc.png").is_file()
    assert (out_dir / "report_plots" / "comparison_roc.svg").is_file()
    assert not (out_dir / "xception_ft" / "plots").exists()
    assert (out_dir / "comparison.json").is_file()
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # atomic writes left nothing


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
    # no profile.json, gradcam/ or diagrams: those parts are simply absent
    assert "Model profile" not in html and "Grad-CAM" not in html and "<h3>Architecture</h3>" not in html
    assert "Published, different data" in html and (tmp_path / "comparison.json").is_file()


def test_gradcam_gallery_skips_missing_overlays_and_survives_a_broken_index(tmp_path):
    from triptych.reporting.report import _gradcam

    run = write_synthetic_run(tmp_path, "g", n_test=60, extras=True)
    index = run.root / "gradcam" / "gradcam.json"
    data = json.loads(index.read_text())
    data["items"].append({"path": "x.jpg", "true": "a", "pred": "b", "prob": None, "overlay": "gone.png"})
    data["items"].append({"path": "y.jpg", "true": "a", "pred": "b", "prob": 0.9, "overlay": "../manifest.json"})
    index.write_text(json.dumps(data))
    gallery = _gradcam(load_run(run))
    assert len(gallery["items"]) == 2 and gallery["missing"] == 2
    assert all(item["uri"].startswith("data:image/png;base64,") for item in gallery["items"])
    index.write_text("{not json")
    view = load_run(run)
    assert _gradcam(view) is None and "gradcam/gradcam.json unreadable" in view.problems[0]


def test_mcnemar_refusal_is_shown_not_fatal(tmp_path):
    runs = [write_synthetic_run(tmp_path, name, n_test=n, evaluate=False) for name, n in (("a", 100), ("b", 120))]
    views = [load_run(r) for r in runs]
    for view in views:
        view.label = view.run.name
    result = _mcnemar(views)
    assert result["rows"] == [] and "not evaluated on the same test images" in result["error"]


def test_stale_metrics_are_recomputed_in_memory_keeping_trainer_fields(tmp_path):
    run = write_synthetic_run(tmp_path, "r", n_test=80, seed=4)
    pd.read_csv(run.predictions).iloc[:50].to_csv(run.predictions, index=False)
    later = run.metrics.stat().st_mtime + 10
    os.utime(run.predictions, (later, later))
    view = load_run(run)
    assert view.metrics["n_test"] == 50 and view.metrics["params"] == 1_000_004
    assert json.loads(run.metrics.read_text())["n_test"] == 80  # computed for the report, not written


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


def test_footer_says_how_to_view_tensorboard_scalars(tmp_path, monkeypatch):
    monkeypatch.setattr("triptych.reporting.report.run_figures", lambda *a: {})  # tables only: fast
    run = write_synthetic_run(tmp_path / "out", "tb", n_test=60)
    assert "tensorboard --logdir" not in build_report([run.root], tmp_path / "r.html").read_text()
    (run.tensorboard_dir / "train").mkdir(parents=True)
    html = build_report([run.root], tmp_path / "r.html").read_text()
    assert f"<code>tensorboard --logdir {tmp_path / 'out'}</code>" in html.split("<footer>")[1]


def test_recipe_and_balanced_accuracy_are_shown(tmp_path, monkeypatch):
    monkeypatch.setattr("triptych.reporting.report.run_figures", lambda *a: {})  # tables only: fast
    recipe = {"augment": "Augment(crop_padding=4, flip=True, mixup=0.2)", "ema_momentum": 0.999,
              "class_weights": {"Baroque": 0.5, "Cubism": 2.0}, "tta": "flip"}
    on = write_synthetic_run(tmp_path, "on", record={"recipe": recipe})
    off = write_synthetic_run(tmp_path, "off", record={"recipe": {"augment": "Augment(crop_padding=0, flip=False)"}})
    html = build_report([on.root, off.root], tmp_path / "r.html").read_text()
    shown = section(html, "run-on")
    assert '<th>augmentation</th><td class="">Augment(crop_padding=4, flip=True, mixup=0.2)</td>' in shown
    assert '<th>weight average</th><td class="">EMA, momentum 0.999</td>' in shown
    assert '<th>class weights</th><td class="">balanced: Baroque 0.50, Cubism 2.00</td>' in shown
    assert '<th>test-time augmentation</th><td class="">flip (probabilities averaged)</td>' in shown
    balanced = json.loads(on.metrics.read_text())["balanced_accuracy"]
    assert "balanced accuracy [95% CI]" in shown and f"{balanced:.3f}" in shown.split("balanced accuracy [95% CI]")[1][:200]
    plain = section(html, "run-off")
    assert "<th>augmentation</th>" in plain
    assert not any(f"<th>{row}</th>" in plain for row in ("weight average", "class weights", "test-time augmentation"))


def test_figures_rendered_ahead_are_used_and_found_by_content(tmp_path, monkeypatch):
    """A FigureCache filled while experiments run spares the report every render of those runs, and a
    run whose history changed afterwards is drawn again, not shown with its old curves."""
    import triptych.reporting.report as report_module
    from triptych.reporting import FigureCache, build_report

    write_synthetic_run(tmp_path, "a", model="resnet50", skill=1.0, seed=1)
    write_synthetic_run(tmp_path, "b", model="xception", skill=2.0, seed=2)
    renders = []
    real_render = report_module.render
    monkeypatch.setattr(report_module, "render", lambda fig, *a, **k: renders.append(fig) or real_render(fig, *a, **k))
    cache = FigureCache()
    cache.add_run(tmp_path / "a")
    cache.add_run(tmp_path / "b")
    ahead = len(renders)
    assert ahead == 14  # 7 figures a run
    build_report([tmp_path], tmp_path / "report.html", figures=cache)
    assert len(renders) == ahead + 2  # the two comparison figures only
    with_cache = (tmp_path / "report_plots" / "a" / "confusion_matrix.png").read_bytes()
    history = tmp_path / "b" / "history.csv"
    frame = pd.read_csv(history)
    frame.loc[0, "accuracy"] = 0.01
    frame.to_csv(history, index=False)
    build_report([tmp_path], tmp_path / "report2.html", figures=cache)
    assert len(renders) == ahead + 2 + 7 + 2  # b's figures again (its history changed), comparison again
    plain = build_report([tmp_path], tmp_path / "report3.html")
    assert (tmp_path / "report3_plots" / "a" / "confusion_matrix.png").read_bytes() == with_cache
    assert plain.is_file()
