"""Side-by-side timing for every benchmark ratio: two callables doing comparable work, run in
alternating rounds (A B, B A, A B, ...) after the same warm-up, timed in wall-clock and process
CPU time, with the load average before and after.

A ratio's headline is the ratio of the two sides' medians, never a single sample; the per-round
ratios give its spread. Process CPU time (``time.process_time``) counts every thread of this
process, TensorFlow's intra-op pool included, so it is less disturbed than wall time by other
processes on a shared machine (but not immune: cache and memory-bandwidth contention remain).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# The CPU features that decide which oneDNN kernels (fp32, bf16, AMX) a timing ran on.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "avx512_fp16")
CLOCKS = ("wall", "cpu")


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def cpu_resolution() -> dict:
    """What the CPU timings ran on: the CPU's model and flags, and the oneDNN ISA cap if set."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "cpu": model,
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
    }


@dataclass
class Comparison:
    """Per-round samples of two sides; ``wall[name][i]`` and ``cpu[name][i]`` are round i's seconds."""

    names: tuple[str, str]
    warmup: int
    order: list[str] = field(default_factory=list)  # the timed calls, in the order they ran
    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)

    @property
    def rounds(self) -> int:
        return len(self.wall[self.names[0]])

    def pattern(self) -> str:
        """Which side ran first in each round, e.g. 'AB BA AB'."""
        letters = "".join("AB"[self.names.index(name)] for name in self.order)
        return " ".join(letters[i : i + 2] for i in range(0, len(letters), 2))

    def samples(self, name: str, clock: str = "wall") -> list[float]:
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
        return getattr(self, clock)[name]

    def median(self, name: str, clock: str = "wall") -> float:
        return statistics.median(self.samples(name, clock))

    def ratio(self, numerator: str, denominator: str, clock: str = "wall") -> float:
        """Median seconds of ``numerator`` / median seconds of ``denominator``."""
        return self.median(numerator, clock) / self.median(denominator, clock)

    def round_ratios(self, numerator: str, denominator: str, clock: str = "wall") -> list[float]:
        """The same ratio within each round (both sides measured back to back)."""
        return [n / d for n, d in zip(self.samples(numerator, clock), self.samples(denominator, clock), strict=True)]

    def report(self, numerator: str, denominator: str, digits: int = 4) -> dict:
        """JSON-ready: the ratio of medians (wall and CPU), its per-round spread, samples and load."""
        out: dict = {
            "ratio_definition": f"median seconds of {numerator} / median seconds of {denominator}",
            "rounds": self.rounds,
            "warmup_calls_each": self.warmup,
            "order": f"A={self.names[0]}, B={self.names[1]}: {self.pattern()}",
            "load_average_before": self.load_before,
            "load_average_after": self.load_after,
        }
        for clock in CLOCKS:
            per_round = self.round_ratios(numerator, denominator, clock)
            out[f"ratio_{clock}"] = round(self.ratio(numerator, denominator, clock), digits)
            out[f"ratio_{clock}_round_min"] = round(min(per_round), digits)
            out[f"ratio_{clock}_round_max"] = round(max(per_round), digits)
            out[f"seconds_{clock}"] = {n: [round(s, digits) for s in self.samples(n, clock)] for n in self.names}
        return out


def alternate(
    sides: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    wall_clock: Callable[[], float] = time.perf_counter,
    cpu_clock: Callable[[], float] = time.process_time,
) -> Comparison:
    """Time two callables in ``rounds`` alternating rounds: A B, then B A, then A B, ...

    First each side is called ``warmup`` times untimed, in the same way (tracing, caches), so
    neither side's first timed call pays for a warm-up the other one got for free."""
    if len(sides) != 2:
        raise ValueError(f"sides must hold exactly two callables, got {len(sides)}")
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    names = tuple(sides)
    result = Comparison(names, warmup, wall={n: [] for n in names}, cpu={n: [] for n in names})
    for _ in range(warmup):
        for name in names:
            sides[name]()
    result.load_before = load_average()
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            wall_started, cpu_started = wall_clock(), cpu_clock()
            sides[name]()
            result.wall[name].append(wall_clock() - wall_started)
            result.cpu[name].append(cpu_clock() - cpu_started)
            result.order.append(name)
    result.load_after = load_average()
    return result
