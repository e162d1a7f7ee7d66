"""benchmarks/timing.py: alternating rounds, identical warm-up, ratio-of-medians arithmetic.

Fake callables advance fake clocks by fixed amounts, so the math is checked exactly and no
assertion depends on real time."""

import importlib.util
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("bench_timing", Path(__file__).parents[1] / "benchmarks" / "timing.py")
timing = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = timing  # dataclasses look their module up there
_SPEC.loader.exec_module(timing)


class FakeClocks:
    def __init__(self):
        self.wall = 0.0
        self.cpu = 0.0
        self.calls: list[str] = []

    def side(self, name: str, wall_costs: list[float], cpu_costs: list[float]):
        """A callable whose k-th call takes wall_costs[k] wall seconds and cpu_costs[k] CPU seconds."""
        count = iter(range(len(wall_costs)))

        def call():
            k = next(count)
            self.calls.append(name)
            self.wall += wall_costs[k]
            self.cpu += cpu_costs[k]

        return call


def test_warmup_then_alternating_rounds_abba():
    clocks = FakeClocks()
    sides = {"a": clocks.side("a", [1.0] * 6, [1.0] * 6), "b": clocks.side("b", [1.0] * 6, [1.0] * 6)}
    result = timing.alternate(sides, rounds=4, warmup=2, wall_clock=lambda: clocks.wall, cpu_clock=lambda: clocks.cpu)
    assert clocks.calls == ["a", "b", "a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert result.order == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert result.pattern() == "AB BA AB BA"
    assert result.rounds == 4


def test_warmup_calls_are_not_timed_and_ratio_is_of_medians():
    clocks = FakeClocks()
    # First call of each is the (slow) warm-up and must not show in the samples.
    a = clocks.side("a", [100.0, 2.0, 4.0, 3.0], [50.0, 1.0, 1.0, 1.0])
    b = clocks.side("b", [100.0, 1.0, 1.0, 10.0], [50.0, 2.0, 2.0, 2.0])
    result = timing.alternate({"a": a, "b": b}, rounds=3, warmup=1,
                              wall_clock=lambda: clocks.wall, cpu_clock=lambda: clocks.cpu)
    assert result.samples("a") == [2.0, 4.0, 3.0]
    assert result.samples("b") == [1.0, 1.0, 10.0]
    assert result.median("a") == 3.0 and result.median("b") == 1.0
    assert result.ratio("a", "b") == 3.0  # median 3 / median 1, not a mean nor the best sample
    assert result.ratio("a", "b", "cpu") == 0.5
    assert result.round_ratios("a", "b") == [2.0, 4.0, 0.3]
    report = result.report("a", "b")
    assert report["ratio_wall"] == 3.0 and report["ratio_cpu"] == 0.5
    assert report["ratio_wall_round_min"] == 0.3 and report["ratio_wall_round_max"] == 4.0
    assert report["rounds"] == 3 and report["warmup_calls_each"] == 1
    assert report["seconds_wall"] == {"a": [2.0, 4.0, 3.0], "b": [1.0, 1.0, 10.0]}
    assert len(report["load_average_before"]) == 3


@pytest.mark.parametrize("sides, rounds", [({"a": print}, 3), ({"a": print, "b": print}, 0)])
def test_refuses_other_than_two_sides_or_no_rounds(sides, rounds):
    with pytest.raises(ValueError):
        timing.alternate(sides, rounds=rounds)


def test_cpu_resolution_names_only_known_flags():
    resolution = timing.cpu_resolution()
    assert set(resolution["cpu_flags"]) <= set(timing.CPU_FLAGS)
    assert set(resolution) == {"cpu", "cpu_flags", "onednn_max_cpu_isa"}
