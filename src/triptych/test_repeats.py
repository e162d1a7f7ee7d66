"""Expanding ``repeats: N`` into one run per seed (no TensorFlow)."""

import pytest

from triptych.config import ExperimentConfig, parse_config
from triptych.errors import TriptychError
from triptych.repeats import expand_repeats, repeat_name, repeat_of


def _config(**experiment):
    return parse_config({"seed": 5, "experiments": [{"name": "cnn", **experiment}, {"name": "other"}]})


def test_an_experiment_without_repeats_is_unchanged():
    config = _config()
    assert expand_repeats(config) == [(config.experiments[0], 5), (config.experiments[1], 5)]


def test_repeats_become_one_run_per_seed_on_the_configs_split():
    runs = expand_repeats(_config(repeats=3))
    assert [(exp.name, seed) for exp, seed in runs] == [("cnn@s5", 5), ("cnn@s6", 6), ("cnn@s7", 7), ("other", 5)]
    assert [exp.data.split_seed for exp, _ in runs[:3]] == [5, 5, 5]
    assert all(exp.repeats == 1 for exp, _ in runs)
    # The child process re-validates each expanded experiment: its name must pass.
    assert ExperimentConfig.model_validate(runs[0][0].model_dump(mode="json")).name == "cnn@s5"


def test_resplit_draws_a_split_per_seed_and_split_seed_fixes_it():
    assert [e.data.split_seed for e, _ in expand_repeats(_config(repeats=2, resplit=True))[:2]] == [5, 6]
    fixed = expand_repeats(_config(repeats=2, data={"split_seed": 11}))
    assert [e.data.split_seed for e, _ in fixed[:2]] == [11, 11]


def test_repeat_names_round_trip_and_users_cannot_take_them():
    assert repeat_of(repeat_name("a.b-c", 12)) == ("a.b-c", 12)
    assert repeat_of("plain") is None and repeat_of("x@s") is None
    with pytest.raises(TriptychError, match="may not contain '@'"):
        parse_config({"experiments": [{"name": "cnn@s1"}]})
    with pytest.raises(TriptychError, match="repeats"):
        parse_config({"experiments": [{"name": "cnn", "repeats": 0}]})
