"""The tracker interface (a no-op base) shared by every tracking backend; no backend imports here."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

Warn = Callable[[str], None]


def warn_line(message: str) -> None:
    """The default way a tracker says it gave up: one line on stderr."""
    print(f"triptych: warning: {message}", file=sys.stderr, flush=True)


class Tracker:
    """Does nothing; the base of every tracker (``tracking: none``). Use as a context manager:
    leaving the block with an exception closes the tracked run as failed."""

    def log_experiment(self, run_dir: str | Path) -> None:
        """Record one finished experiment from its run directory."""

    def close(self, report: str | Path | None = None, failed: bool = False) -> None:
        """End tracking, attaching the comparison report if there is one."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)
