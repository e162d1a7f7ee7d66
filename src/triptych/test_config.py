import pytest

from triptych.config import apply_override, load_config, parse_config
from triptych.errors import TriptychError

MINIMAL = {"experiments": [{"name": "a"}]}


def test_defaults_are_filled_in():
    config = parse_config(MINIMAL)
    assert config.seed == 0
    assert config.experiments[0].model.name == "resnet50"
    assert config.experiments[0].training.optimizer == "sgd"


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"experiments": [{"name": "a", "training": {"epoch": 3}}]}, r"unknown key 'experiments\[0\].training.epoch'; allowed keys here: epochs"),
        ({"experiments": [{"name": "a", "training": {"epochs": "many"}}]}, r"training.epochs: .*integer.*'many'"),
        ({"experiments": [{"name": "a", "training": {"epochs": -1}}]}, r"training.epochs: .*greater than or equal to 1"),
        ({"experiments": [{"name": "a", "training": {"optimizer": "adm"}}]}, r"'sgd', 'adamw' or 'adam'"),
        ({"experiments": [{"name": "a", "data": {"dataset": "folder"}}]}, r"data.path is required"),
        ({"experimnts": [{"name": "a"}]}, r"unknown key 'experimnts'; allowed keys here: seed, title, experiments"),
        ({"experiments": [{"name": "a"}, {"name": "a"}]}, r"unique; repeated: a"),
        ({"experiments": []}, r"experiments: .*at least 1"),
    ],
)
def test_mistakes_are_one_line_naming_the_key(raw, message):
    with pytest.raises(TriptychError, match=message) as info:
        parse_config(raw)
    assert "\n" not in str(info.value)


def test_overrides_apply_to_every_experiment_or_top_level():
    raw = {"experiments": [{"name": "a"}, {"name": "b"}]}
    config = parse_config(apply_override(apply_override(raw, "training.epochs=2"), "seed=7"))
    assert [e.training.epochs for e in config.experiments] == [2, 2]
    assert config.seed == 7
    one = parse_config(apply_override(raw, "experiments.1.data.batch_size=8"))
    assert [e.data.batch_size for e in one.experiments] == [64, 8]


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(TriptychError, match="expected key=value"):
        apply_override(MINIMAL, "training.epochs")
    with pytest.raises(TriptychError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiments: [\n")
    with pytest.raises(TriptychError, match="not valid YAML"):
        load_config(bad)


def test_shipped_configs_are_valid():
    from pathlib import Path

    configs = Path(__file__).resolve().parents[2] / "configs"
    for path in sorted(configs.glob("*.yaml")):
        assert load_config(path).experiments
