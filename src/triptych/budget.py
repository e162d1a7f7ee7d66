"""Time budgets: a duration in, a number of epochs that fits it out.

``training.time_budget`` (per experiment) and ``run_config(..., RunOptions(budget=...))`` /
``triptych run --budget`` (a whole config) say how long a run may take, as AutoGluon's
``time_limit`` does. Before training, the runner measures on this machine what one epoch of each
training phase and the fixed steps cost (:mod:`triptych.training.budget_plan`, the warm-up) and
:func:`choose_epochs` turns those measurements into epochs; the configured epochs are upper limits.

The rules, in one place:

- The budget covers the experiment's wall time from its process start: data preparation, the
  warm-up itself, traces, a feature-cache build, every epoch (training, validation, checkpoints),
  the test predictions and the extras (profile, Grad-CAM). :data:`MARGIN` of it is kept back for
  what cannot be measured in advance.
- Phases are filled in order, each leaving room for one epoch of every later phase: a cheap head
  phase (on cached features) gets its configured epochs, fine-tuning the rest.
- A whole config's budget is shared out as it goes: an experiment with its own
  ``training.time_budget`` gets that (a fixed slice: a from-scratch model whose time is paid again
  on every run); the others get an equal share of what is left (the elapsed time of the finished
  ones, the slices of the later ones and a reserve for the report subtracted), so a cheap finish
  (configured epochs reached, caches warm) leaves its time to the next one.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from triptych.errors import InvalidArgumentError
from triptych.rundir import BudgetInfo

MARGIN = 0.05  # of the budget, kept back for what the warm-up cannot measure
MIN_SHARE_S = 1.0  # a config's budget already spent: the experiment refuses with its minimum


def parse_budget(budget: str | float | None) -> float | None:
    """``'90s'``, ``'20m'``, ``'1h'``, ``'1h30m'`` or a number of seconds -> seconds (``None`` stays ``None``)."""
    if budget is None:
        return None
    if isinstance(budget, int | float) and not isinstance(budget, bool):
        seconds = float(budget)
    else:
        match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*",
                             str(budget).lower())
        if not match or not any(match.groups()):
            raise InvalidArgumentError(
                f"budget {budget!r} is not a duration; expected e.g. '90s', '20m', '1h', '1h30m' or seconds")
        hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidArgumentError(f"budget must be a positive duration, got {budget!r}")
    return seconds


def format_budget(seconds: float) -> str:
    """90 -> '1m30s', 3600 -> '1h', 20.5 -> '20.5s' (what :func:`parse_budget` reads back)."""
    if seconds < 60:
        return f"{seconds:g}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if value)


@dataclass(frozen=True)
class PhaseCost:
    """What one training phase costs on this machine, as measured by the warm-up."""

    phase: str
    epoch_seconds: float  # one epoch: training steps, validation, checkpoints
    fixed_seconds: float  # once per phase: traces, a feature-cache build
    max_epochs: int  # the configured epochs, an upper limit


def choose_epochs(
    budget_s: float, fixed_s: float, phases: Sequence[PhaseCost], *, experiment: str
) -> dict[str, int]:
    """Epochs per phase so that ``fixed_s`` (everything outside the phases, spent or planned),
    the phases' own fixed costs and their epochs fit in ``budget_s`` less :data:`MARGIN`.

    Deterministic: the same costs give the same epochs. Phases are filled in order, each leaving
    room for one epoch of every later one. A budget too small for one epoch of each phase raises
    :class:`InvalidArgumentError` naming the minimum.
    """
    fixed = fixed_s + sum(p.fixed_seconds for p in phases)
    one_epoch_each = sum(p.epoch_seconds for p in phases)
    usable = budget_s * (1 - MARGIN) - fixed
    if usable < one_epoch_each:
        minimum = math.ceil((fixed + one_epoch_each) / (1 - MARGIN))
        raise InvalidArgumentError(
            f"time_budget {format_budget(budget_s)} is too small for one epoch of {experiment} (measured "
            f"~{one_epoch_each:.1f} s per epoch + {fixed:.1f} s fixed costs); the minimum is about {minimum} s"
        )
    chosen: dict[str, int] = {}
    for index, cost in enumerate(phases):
        later = sum(p.epoch_seconds for p in phases[index + 1:])
        fits = math.floor((usable - later) / max(cost.epoch_seconds, 1e-9) + 1e-9)
        chosen[cost.phase] = max(1, min(cost.max_epochs, fits))
        usable -= chosen[cost.phase] * cost.epoch_seconds
    return chosen


def next_share(total_s: float, elapsed_s: float, own_s: Sequence[float | None], reserve_s: float = 0.0) -> float:
    """The next experiment's share of a config's budget; ``own_s``: the own ``training.time_budget``
    (seconds, None without one) of it and of every experiment after it.

    Its own budget, when it has one (no more than is left after the later ones' own budgets);
    else an equal share, among the experiments left without one, of what the later own budgets leave.
    """
    later_own = sum(s for s in own_s[1:] if s is not None)
    left = total_s - elapsed_s - reserve_s - later_own
    if own_s[0] is not None:
        return round(max(min(own_s[0], left), MIN_SHARE_S), 1)
    sharing = sum(1 for s in own_s if s is None)
    return round(max(left / sharing, MIN_SHARE_S), 1)


@dataclass
class BudgetClock:
    """A whole config's budget, shared out over its experiments as they run."""

    total_s: float
    reserve_s: float = 0.0  # after the last experiment (the report)
    started: float = field(default_factory=time.monotonic)

    def share(self, own_s: Sequence[float | None]) -> float:
        """:func:`next_share` now: ``own_s`` are the own budgets of the next experiment and the later ones."""
        return next_share(self.total_s, time.monotonic() - self.started, own_s, self.reserve_s)


def describe(info: BudgetInfo) -> str:
    """'12 epochs chosen for a budget of 1m (measured 85 img/s)', per phase for two phases."""
    phases = list(info.chosen_epochs)
    if len(phases) == 1:
        epochs = f"{info.chosen_epochs[phases[0]]} epochs"
        speeds = f"{info.train_img_s[phases[0]]:,.0f} img/s"
    else:
        epochs = " + ".join(f"{phase} {n}" for phase, n in info.chosen_epochs.items()) + " epochs"
        speeds = ", ".join(f"{phase} {info.train_img_s[phase]:,.0f} img/s" for phase in phases)
    limits = "/".join(str(n) for n in info.configured_epochs.values())
    return (f"{epochs} chosen for a budget of {format_budget(info.seconds)} (measured {speeds}; "
            f"configured {limits} at most; planned {info.planned_seconds:.0f} s)")
