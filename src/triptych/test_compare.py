"""triptych compare / init: folder refusals, the recipe, the budget, the commented config, a real run."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from conftest import write_image_folder
from triptych.cli.main import main
from triptych.compare import (
    MIN_IMAGES_PER_CLASS,
    check_folder,
    compare_folder,
    folder_notes,
    parse_budget,
    parse_models,
    plan_for_budget,
    recipe_for_folder,
    recipe_yaml,
)
from triptych.config import load_config
from triptych.errors import InvalidArgumentError, MissingFileError, TriptychError


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("2.5m", 150),
                                           ("45", 45), (120, 120), (None, None)])
def test_budget_durations(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["5x", "m", "", "-5m", "0s", "five minutes"])
def test_bad_budget_is_refused_naming_the_argument(text):
    with pytest.raises(InvalidArgumentError, match=r"budget .*(not a duration|positive)"):
        parse_budget(text)


def test_a_smaller_budget_gives_a_smaller_recipe():
    short, long, unlimited = plan_for_budget("5m", 2), plan_for_budget("10h", 2), plan_for_budget(None, 2)
    assert short.seconds_per_model == 150
    assert short.train_per_class < (long.train_per_class or 10**9)
    assert short.pretrained_size < (long.pretrained_size or 10**9)
    assert short.scratch_epochs <= long.scratch_epochs
    assert unlimited.train_per_class is None and unlimited.pretrained_size is None
    # The same budget shared by more models leaves each of them less.
    assert plan_for_budget("20m", 6).train_per_class < plan_for_budget("20m", 1).train_per_class


def test_models_are_checked():
    assert parse_models("xception, resnet18") == ["xception", "resnet18"]
    with pytest.raises(InvalidArgumentError, match="more than once"):
        parse_models("resnet18,resnet18")
    with pytest.raises(InvalidArgumentError, match="unknown model\(s\) 'resnet19'; valid models: .*densenet121, "):
        parse_models("resnet19")
    with pytest.raises(InvalidArgumentError, match="models is empty"):
        parse_models(" , ")


def test_missing_and_empty_folders_are_refused(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        check_folder(tmp_path / "nope")
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    (tmp_path / "empty" / "cats" / "notes.txt").write_text("not an image")
    with pytest.raises(InvalidArgumentError, match=r"empty has no images"):
        check_folder(tmp_path / "empty")


def test_one_class_is_refused(tmp_path):
    folder = write_image_folder(tmp_path / "one", ["cats"], 12, size=16)
    with pytest.raises(InvalidArgumentError, match=r"1 class folder\(s\) with images \(cats \(12\)\); .*at least 2"):
        check_folder(folder)


def test_a_class_with_too_few_images_is_refused_naming_it(tmp_path):
    folder = write_image_folder(tmp_path / "few", ["cats", "dogs"], 12, size=16)
    for extra in sorted((folder / "dogs").iterdir())[MIN_IMAGES_PER_CLASS - 1:]:
        extra.unlink()
    with pytest.raises(InvalidArgumentError, match=rf"class\(es\) dogs \({MIN_IMAGES_PER_CLASS - 1}\) have fewer than "
                                                   rf"{MIN_IMAGES_PER_CLASS} usable images"):
        check_folder(folder)


def test_unreadable_images_do_not_count_and_are_skipped(tmp_path):
    folder = write_image_folder(tmp_path / "broken", ["cats", "dogs"], 11, size=16)
    (folder / "dogs" / "0000.png").write_bytes(b"not a png")
    report = check_folder(folder)  # 10 usable dogs: enough
    assert any("1 unusable image file(s)" in note for note in folder_notes(report))
    config = recipe_for_folder(folder, "resnet18", audit=report)
    assert config.experiments[0].data.skip_bad is True
    (folder / "dogs" / "0001.png").write_bytes(b"")
    with pytest.raises(InvalidArgumentError, match=r"dogs \(9\)"):
        check_folder(folder)


def test_imbalance_is_warned_and_recorded_in_the_config(tmp_path):
    folder = write_image_folder(tmp_path / "imbalanced", ["rare"], 10, size=16)
    write_image_folder(folder, ["common"], 40, size=16, seed=3)
    report = check_folder(folder)
    notes = folder_notes(report)
    assert "40 images" not in notes[0] and "common 40, rare 10" in notes[0]
    assert any(re.search(r"imbalanced classes \(common 40 vs rare 10, 4.0x\).*macro F1", n) for n in notes)
    text = recipe_yaml(recipe_for_folder(folder, "resnet18", audit=report), report)
    assert "# audit: warning: imbalanced classes" in text


def test_recipe_fine_tunes_pretrained_backbones_and_trains_the_others_from_scratch(image_folder):
    config = recipe_for_folder(image_folder, "xception,densenet121,resnet50")
    xception, densenet, resnet = config.experiments
    assert [e.name for e in config.experiments] == ["xception_finetuned", "densenet121_finetuned", "resnet50_scratch"]
    assert (xception.data.image_size, densenet.data.image_size, resnet.data.image_size) == (299, 224, 224)
    assert xception.training.fine_tune.unfreeze_blocks == ["block14"]
    assert densenet.training.fine_tune.unfreeze_blocks == ["conv5_block16", "conv5_block15"]
    assert xception.model.weights[-2:] == ["imagenet", "random"]
    assert resnet.training.fine_tune is None and resnet.model.weights is None
    assert all(e.data.path == str(image_folder.resolve()) and e.data.train_per_class is None for e in config.experiments)
    budgeted = recipe_for_folder(image_folder, "xception,resnet18", budget="5m", overrides=["training.epochs=2"])
    plan = plan_for_budget("5m", 2)
    assert budgeted.experiments[0].data.image_size == plan.pretrained_size
    assert budgeted.experiments[1].data.train_per_class == plan.train_per_class
    assert [e.training.epochs for e in budgeted.experiments] == [2, 2]
    # Each model's share becomes its time budget: the epochs above are upper limits.
    assert [e.training.time_budget for e in budgeted.experiments] == [150, 150]
    assert all(e.training.time_budget is None for e in config.experiments)


def test_init_prints_a_commented_config_that_run_accepts(image_folder, tmp_path, capsys):
    assert main(["init", str(image_folder), "--models", "xception,resnet18", "--budget", "20m"]) == 0
    captured = capsys.readouterr()
    assert "60 images in 3 classes: cats 20, dogs 20, owls 20" in captured.err
    path = tmp_path / "my.yaml"
    path.write_text(captured.out)
    config = load_config(path)
    assert config == recipe_for_folder(image_folder, "xception,resnet18", budget="20m")
    key_lines = [line for line in captured.out.splitlines() if re.match(r"^\s*(- )?[a-z_]+:", line)]
    assert len(key_lines) == _count_keys(yaml.safe_load(captured.out)) > 2 * 40
    assert all("  # " in line for line in key_lines)


def _count_keys(node) -> int:
    """Keys of a loaded config, nested ones included (model options are one free-form value)."""
    if isinstance(node, list):
        return sum(_count_keys(item) for item in node if isinstance(item, dict))
    return sum(1 + (_count_keys(value) if isinstance(value, dict | list) and key != "options" else 0)
               for key, value in node.items())


def test_init_refusal_is_one_line_and_exit_code_2(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "one", ["cats"], 12, size=16)
    assert main(["init", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("triptych init: error: folder ") and "at least 2 classes" in err[0]


def test_config_schema_command_lists_every_key(capsys):
    from triptych.config_schema import config_keys

    assert main(["config", "--schema"]) == 0
    out = capsys.readouterr().out
    assert all(f"{key.path}  (" in out for key in config_keys())


@pytest.mark.slow
def test_compare_end_to_end_on_a_tiny_folder(tmp_path, monkeypatch, capsys):
    folder = write_image_folder(tmp_path / "images", ["cats", "dogs"], 12, size=16)
    out = tmp_path / "run"
    # An unusable tracking store: the comparison must still finish, with one warning line. No time
    # budget: a minute may not fit one epoch on a busy machine (test_budget_run.py covers budgets).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    runs = compare_folder(folder, ["resnet18"], out, budget="1m", track="mlflow",
                          overrides=["data.image_size=16", "training.epochs=1", "data.batch_size=8",
                                     "training.time_budget=null"])
    assert [run.name for run in runs] == ["resnet18_scratch"] and runs[0].is_done()
    assert (out / "report.html").is_file()
    written = load_config(out / "config.yaml")
    assert written.tracking == "mlflow" and written.experiments[0].training.epochs == 1
    assert (out / "config.yaml").read_text().startswith(f"# triptych compare recipe for {folder.resolve()}")
    assert json.loads((runs[0].root / "manifest.json").read_text())["image_size"] == 16
    assert list((runs[0].root / "tensorboard").rglob("events.out.tfevents.*"))  # TensorBoard is on by default
    warnings = [line for line in capsys.readouterr().err.splitlines() if "tracking" in line]
    assert len(warnings) == 1 and warnings[0].startswith("triptych: warning: tracking: MLflow failed")
    with pytest.raises(TriptychError, match="already exists"):
        compare_folder(folder, ["resnet18"], out)
