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
        ({"experimnts": [{"name": "a"}]}, r"unknown key 'experimnts'; allowed keys here: seed, title, tracking, time_budget, experiments"),
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


def _walk_fields(model, prefix=""):
    """Every (path, FieldInfo) of a pydantic model and its sections, found independently of config_schema."""
    import typing

    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        path = prefix + name
        yield path, field
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        candidates += [a for c in list(candidates) for a in typing.get_args(c)]
        section = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if section is not None:
            many = typing.get_origin(field.annotation) is list
            yield from _walk_fields(section, f"{path}{'[]' if many else ''}.")


def test_schema_lists_every_key_with_type_default_and_description():
    from triptych.config import Config
    from triptych.config_schema import REQUIRED, config_keys, format_schema

    fields = dict(_walk_fields(Config))
    keys = {key.path: key for key in config_keys()}
    assert list(keys) == list(fields)
    for path, field in fields.items():
        assert field.description, f"{path} has no description"
        assert keys[path].description == field.description
        assert keys[path].type
    assert keys["experiments[].training.epochs"].type == "int >= 1"
    assert keys["experiments[].training.epochs"].default == 10
    assert keys["experiments[].training.optimizer"].type == "sgd | adamw | adam"
    assert keys["experiments[].name"].default == REQUIRED
    assert keys["experiments[].training.tensorboard"].default is True
    text = format_schema(list(keys.values()))
    assert all(path in text for path in fields)
    assert "experiments[].training.fine_tune.unfreeze_blocks  (list of str; default [])" in text


def test_commented_yaml_loads_back_and_comments_every_key():
    import re

    import yaml

    from triptych.config_schema import commented_yaml

    config = parse_config({
        "title": "a: b # not a comment",
        "experiments": [
            {"name": "a", "model": {"weights": ["$W/x.h5", "imagenet", None], "options": {"dropout": 0.3}},
             "training": {"learning_rate": 1e-5, "fine_tune": {"unfreeze_blocks": ["block14"]}}},
            {"name": "b", "data": {"dataset": "folder", "path": "/data/my images"}},
        ],
    })
    text = commented_yaml(config, header="made by a test\nsecond line")
    assert text.startswith("# made by a test\n# second line\n")
    assert parse_config(yaml.safe_load(text)) == config
    key_lines = [line for line in text.splitlines() if re.match(r"^\s*(- )?[a-z_]+:", line)]
    assert len(key_lines) > 2 * 40  # both experiments, every key
    uncommented = [line for line in key_lines if "  # " not in line]
    assert not uncommented
