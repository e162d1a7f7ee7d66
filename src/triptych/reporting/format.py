"""How numbers look in the report, including "n/a" with the reason as a tooltip.

Every table value is a :class:`Cell` so the template never formats numbers itself and an
undefined value can never show up as "nan", "None" or a misleading 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NA = "n/a"


@dataclass(frozen=True)
class Cell:
    """Display text, an optional tooltip, and CSS classes."""

    text: str
    title: str | None = None
    css: str = ""
    sub: str | None = None  # a second, smaller line (the confidence interval)

    @property
    def is_na(self) -> bool:
        return self.text == NA


def na(reason: str) -> Cell:
    return Cell(NA, title=reason, css="na")


def number(value: Any, digits: int = 3, reason: str = "not available") -> Cell:
    if value is None:
        return na(reason)
    return Cell(f"{float(value):.{digits}f}", css="num")


def with_ci(value: Any, ci: Any, digits: int = 3, reason: str = "not available") -> Cell:
    """``0.880 [0.840, 0.913]``: the point estimate with its 95% bootstrap interval."""
    if value is None:
        return na(reason)
    text = f"{float(value):.{digits}f}"
    if ci:
        return Cell(text, title="95% bootstrap confidence interval", css="num", sub=f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]")
    return Cell(text, title="no confidence interval available", css="num")


def integer(value: Any, reason: str = "not available") -> Cell:
    return na(reason) if value is None else Cell(f"{int(value):,}", css="num")


def params(value: Any) -> Cell:
    if value is None:
        return na("the trainer did not record the parameter count")
    value = int(value)
    short = f"{value / 1e6:.1f} M" if value >= 1e6 else f"{value / 1e3:.1f} k" if value >= 1e3 else str(value)
    return Cell(short, title=f"{value:,} parameters", css="num")


def duration(seconds: Any) -> Cell:
    if seconds is None:
        return na("training time was not recorded")
    total = int(round(float(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h"] * bool(hours) + [f"{minutes} min"] * bool(hours or minutes) + [f"{secs} s"]
    return Cell(" ".join(parts), title=f"{float(seconds):.1f} s", css="num")


def p_value(value: float) -> Cell:
    return Cell("< 0.0001" if value < 1e-4 else f"{value:.4f}", css="num")


def p_text(value: float) -> str:
    return "p < 0.0001" if value < 1e-4 else f"p = {value:.4f}"


def gflops(macs: Any, image_size: Any = None) -> Cell:
    """Floating-point operations per image (2 x multiply-adds), in G."""
    if macs is None:
        return na("no profile.json: multiply-adds were not measured")
    at = f" at {int(image_size)}×{int(image_size)}" if image_size else ""
    return Cell(f"{2 * float(macs) / 1e9:.2f}", css="num",
                title=f"{float(macs) / 1e9:.3f} G multiply-adds per image{at}; 1 multiply-add = 2 FLOPs")


def milliseconds(value: Any, title: str | None = None) -> Cell:
    if value is None:
        return na("no profile.json: latency was not measured")
    return Cell(f"{float(value):,.1f}", css="num", title=title)


def per_second(value: Any, title: str | None = None) -> Cell:
    if value is None:
        return na("no profile.json: throughput was not measured")
    return Cell(f"{float(value):,.0f}", css="num", title=title)


def megabytes(value: Any, reason: str = "not recorded", title: str | None = None) -> Cell:
    if value is None:
        return na(reason)
    return Cell(f"{float(value):,.0f}", css="num", title=title)


def image_size(value: Any) -> Cell:
    if value is None:
        return na("the image size was not recorded")
    return Cell(f"{int(value)}×{int(value)}", css="num")
