"""Time budgets: durations, the epoch choice (pure, deterministic), shares of a config's budget."""

from __future__ import annotations

import pytest

from triptych.budget import (
    MARGIN,
    MIN_SHARE_S,
    BudgetClock,
    PhaseCost,
    choose_epochs,
    describe,
    format_budget,
    next_share,
    parse_budget,
)
from triptych.config import Config, parse_config
from triptych.errors import InvalidArgumentError, TriptychError
from triptych.preflight import check_budget, validate_experiments
from triptych.rundir import BudgetInfo


@pytest.mark.parametrize("seconds", [1, 20.5, 59, 60, 90, 3600, 5400, 5430])
def test_format_budget_reads_back_as_the_same_duration(seconds):
    assert parse_budget(format_budget(seconds)) == seconds


@pytest.mark.parametrize("text", ["nan", "inf", "-1", "0", "1d"])
def test_a_budget_that_is_no_positive_duration_is_refused(text):
    with pytest.raises(InvalidArgumentError, match="budget"):
        parse_budget(float(text) if text in ("nan", "inf", "-1", "0") else text)


def test_one_phase_gets_the_epochs_that_fit_after_the_fixed_costs_and_the_margin():
    # 100 s less 5% margin less 10 s fixed = 85 s of epochs: 10 epochs of 8 s.
    assert choose_epochs(100, 10, [PhaseCost("train", 8, 0, 50)], experiment="e") == {"train": 10}


def test_the_choice_is_deterministic_and_grows_with_the_budget():
    phases = [PhaseCost("train", 3.7, 1.3, 1000)]
    choices = [choose_epochs(budget, 12.5, phases, experiment="e")["train"] for budget in (60, 60, 120, 600)]
    assert choices[0] == choices[1]
    assert choices[1] < choices[2] < choices[3]


def test_the_configured_epochs_are_an_upper_limit():
    assert choose_epochs(10_000, 0, [PhaseCost("train", 1, 0, 7)], experiment="e") == {"train": 7}


def test_a_cheap_head_phase_keeps_its_epochs_and_fine_tuning_gets_the_rest():
    phases = [PhaseCost("head", 0.5, 20, 10), PhaseCost("fine-tune", 30, 5, 100)]
    chosen = choose_epochs(300, 15, phases, experiment="e")
    # 300 * 0.95 - 15 - 25 = 245 s: head 10 x 0.5 s = 5 s, fine-tune floor(240 / 30) = 8.
    assert chosen == {"head": 10, "fine-tune": 8}


def test_an_expensive_first_phase_leaves_one_epoch_for_the_next():
    phases = [PhaseCost("head", 10, 0, 100), PhaseCost("fine-tune", 30, 0, 5)]
    chosen = choose_epochs(100, 0, phases, experiment="e")
    assert chosen == {"head": 6, "fine-tune": 1}  # 95 s: 30 s kept for fine-tuning, 65 s -> 6 head epochs
    assert sum(chosen[p.phase] * p.epoch_seconds for p in phases) <= 100 * (1 - MARGIN)


def test_a_budget_too_small_for_one_epoch_is_one_line_naming_the_minimum():
    phases = [PhaseCost("train", 8, 2, 10)]
    with pytest.raises(InvalidArgumentError) as refused:
        choose_epochs(20, 15, phases, experiment="tiny")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("time_budget 20s is too small for one epoch of tiny")
    assert "~8.0 s per epoch + 17.0 s fixed costs" in message
    minimum = int(message.rsplit("about ", 1)[1].split()[0])
    assert choose_epochs(minimum, 15, phases, experiment="tiny") == {"train": 1}  # the minimum is enough
    with pytest.raises(InvalidArgumentError):
        choose_epochs(minimum - 2, 15, phases, experiment="tiny")  # and about the least that is


def test_a_configs_budget_is_shared_equally_over_what_is_left():
    assert next_share(600, 0, [None] * 3) == 200
    assert next_share(600, 300, [None] * 2, reserve_s=10) == 145  # the finished experiment's time is subtracted
    assert next_share(600, 700, [None]) == MIN_SHARE_S  # spent: the experiment refuses, naming its minimum
    clock = BudgetClock(600, started=0.0)  # long ago: the budget is spent
    assert clock.share([None, None]) == MIN_SHARE_S


def test_an_experiments_own_budget_is_its_slice_and_the_others_share_the_rest():
    # demo-like: a scratch model with its own 90 s, a pretrained one without, another scratch one with 90 s
    own = [90.0, None, 90.0]
    assert next_share(600, 0, own, reserve_s=9) == 90
    assert next_share(600, 60, own[1:], reserve_s=9) == 441  # 600 - 60 spent - 9 - the last one's 90
    assert next_share(600, 80, own[1:], reserve_s=9) == 421  # a slower first one leaves less, the slices stay
    assert next_share(600, 500, own[2:], reserve_s=9) == 90
    assert next_share(600, 550, own[2:], reserve_s=9) == 41  # overrun before it: no more than is left
    assert next_share(600, 0, [None, 100.0, None]) == 250  # two share what the slice leaves


def test_a_config_without_own_budgets_gets_the_same_shares_from_the_same_times():
    spent = [0.0, 170.0, 390.0]
    shares = [next_share(600, t, [None] * (3 - i), reserve_s=9) for i, t in enumerate(spent)]
    assert shares == [197.0, 210.5, 201.0]
    assert shares == [next_share(600, t, [None] * (3 - i), reserve_s=9) for i, t in enumerate(spent)]


def test_the_decision_reads_as_epochs_for_a_budget_at_a_measured_speed():
    one = BudgetInfo(seconds=60, chosen_epochs={"train": 12}, configured_epochs={"train": 30},
                     seconds_per_epoch={"train": 3.0}, train_img_s={"train": 85.2}, predict_img_s=300.0,
                     fixed_seconds=20.0, planned_seconds=56.0)
    assert describe(one).startswith("12 epochs chosen for a budget of 1m (measured 85 img/s")
    two = one.model_copy(update={"chosen_epochs": {"head": 10, "fine-tune": 2},
                                 "train_img_s": {"head": 5000.0, "fine-tune": 12.0}})
    assert describe(two).startswith("head 10 + fine-tune 2 epochs chosen for a budget of 1m "
                                    "(measured head 5,000 img/s, fine-tune 12 img/s")


def _config(**training) -> Config:
    return parse_config({"experiments": [{"name": "e", "training": training}]})


def _whole(time_budget, *own) -> Config:
    experiments = [{"name": f"e{i}", "training": {"time_budget": b}} for i, b in enumerate(own)]
    return parse_config({"time_budget": time_budget, "experiments": experiments})


def test_a_configs_time_budget_is_checked_and_the_run_argument_overrides_it():
    assert check_budget(_whole("10m", None), None) == 600
    assert check_budget(_whole("10m", None), "2m") == 120
    assert check_budget(_whole(None, None), None) is None
    with pytest.raises(TriptychError, match=r"^config: time_budget: budget '10 min' is not a duration"):
        _whole("10 min", None)


def test_own_budgets_that_leave_nothing_for_the_others_are_refused_up_front():
    assert check_budget(_whole("10m", "5m", "5m"), None) == 600  # all slices, exactly the whole
    with pytest.raises(InvalidArgumentError, match=r"add up to 10m, which leaves nothing of time_budget 10m"):
        check_budget(_whole("10m", "5m", "5m", None), None)
    with pytest.raises(InvalidArgumentError, match=r"add up to 11m, which leaves nothing of budget 10m"):
        check_budget(_whole(None, "5m", "6m"), "10m")


def test_time_budget_is_checked_with_the_config():
    assert _config(time_budget="1h30m").experiments[0].training.time_budget == "1h30m"
    with pytest.raises(TriptychError, match=r"time_budget: budget '10 minutes' is not a duration"):
        _config(time_budget="10 minutes")


def test_a_budget_cannot_apply_to_multiworker_training():
    config = _config(strategy="multiworker", time_budget="10m")
    with pytest.raises(InvalidArgumentError, match="training.time_budget cannot be used with training.strategy multiworker"):
        validate_experiments(config)
    with pytest.raises(InvalidArgumentError, match="budget cannot be used"):
        check_budget(_config(strategy="multiworker"), "10m")
    assert check_budget(_config(), "2m") == 120 and check_budget(_config(), None) is None


@pytest.mark.parametrize(("name", "seconds"), [("demo.yaml", 600), ("artstyle_cpu.yaml", 5400)])
def test_the_shipped_budgeted_configs_leave_xception_a_share(name, seconds):
    from pathlib import Path

    from triptych.config import load_config

    config = load_config(Path(__file__).resolve().parents[2] / "configs" / name)
    assert check_budget(config, None) == seconds
    own = {exp.model.name: parse_budget(exp.training.time_budget) for exp in config.experiments}
    assert own["xception"] is None  # Xception takes what is left: its cost is the one-off trunk pass
    assert sum(s for s in own.values() if s is not None) <= seconds * 2 / 3
