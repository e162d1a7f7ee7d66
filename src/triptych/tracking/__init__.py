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

from pathlib import Path

from triptych.config import Config
from triptych.errors import InvalidArgumentError
from triptych.tracking.base import Tracker, Warn, warn_line

__all__ = ["TRACKERS", "Tracker", "Warn", "start", "warn_line"]

TRACKERS = ("none", "mlflow")


def start(config: Config, out: str | Path, kind: str | None = None, warn: Warn = warn_line) -> Tracker:
    """A tracker for ``config`` writing into ``out``; ``kind`` overrides ``config.tracking``."""
    kind = kind or config.tracking
    if kind not in TRACKERS:
        raise InvalidArgumentError(f"tracking must be one of {', '.join(TRACKERS)}, not {kind!r}")
    if kind == "none":
        return Tracker()
    from triptych.tracking.mlflow import start_mlflow

    return start_mlflow(config, Path(out), warn)
