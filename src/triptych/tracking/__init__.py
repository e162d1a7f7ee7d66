"""Experiment tracking: send finished run directories to a tracking server, optionally.

``start(config, out)`` returns a :class:`Tracker` for the config's ``tracking`` setting: a no-op
for ``none``, an MLflow parent run for ``mlflow`` (:mod:`triptych.tracking.mlflow`). The
tracker reads what a run wrote to disk (``tracker.log_experiment(run_dir)`` after each
experiment, ``tracker.close(report=...)`` at the end), so it depends on the run directory
contract only, not on how training works.

Tracking never costs a training run: a missing package or a failing server is one warning line
on stderr, after which the tracker does nothing; the run directories hold everything anyway.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from triptych.config import Config
from triptych.errors import InvalidArgumentError

TRACKERS = ("none", "mlflow")
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


def start(config: Config, out: str | Path, kind: str | None = None, warn: Warn = warn_line) -> Tracker:
    """A tracker for ``config`` writing into ``out``; ``kind`` overrides ``config.tracking``."""
    kind = kind or config.tracking
    if kind not in TRACKERS:
        raise InvalidArgumentError(f"tracking must be one of {', '.join(TRACKERS)}, not {kind!r}")
    if kind == "none":
        return Tracker()
    from triptych.tracking.mlflow import start_mlflow

    return start_mlflow(config, Path(out), warn)
