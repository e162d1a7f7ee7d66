"""The run directory contract that training writes and evaluation / reporting read.

``OUT/<experiment>/`` holds:

- ``config.yaml``      the resolved experiment config
- ``manifest.json``    model, weights origin, seed, versions, git sha, data fingerprint,
                       start/end time, ``status`` (``running`` | ``done`` | ``failed``) and ``reason``
- ``history.csv``      one row per epoch: ``epoch``, ``accuracy``, ``loss``, ``val_accuracy``,
                       ``val_loss``, ``learning_rate`` (and ``phase`` for two-phase fine-tuning)
- ``model.keras``      the selected (best on validation) model
- ``predictions.csv``  one row per test image: ``path``, ``y_true``, ``y_pred`` (class names),
                       ``prob_<class>`` per class
- ``metrics.json``     computed from ``predictions.csv`` by :mod:`triptych.evaluation`
- ``split.csv``        which file (or array index) went to train / val / test

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triptych.io import atomic_write_json

STATUS_RUNNING = "running"
STATUS_DONE = "done"
STATUS_FAILED = "failed"


@dataclass(frozen=True)
class RunDir:
    """Paths inside one experiment's run directory."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def model(self) -> Path:
        return self.root / "model.keras"

    @property
    def best_weights(self) -> Path:
        return self.root / "checkpoints" / "best.weights.h5"

    @property
    def backup_dir(self) -> Path:
        return self.root / "checkpoints" / "backup"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def split(self) -> Path:
        return self.root / "split.csv"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest.exists():
            return {}
        return json.loads(self.manifest.read_text(encoding="utf-8"))

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        manifest = self.read_manifest()
        manifest.update(fields)
        atomic_write_json(self.manifest, manifest)
        return manifest

    @property
    def status(self) -> str | None:
        return self.read_manifest().get("status")

    def is_done(self) -> bool:
        return self.status == STATUS_DONE


def experiment_dirs(out: Path) -> list[RunDir]:
    """Experiment directories directly under ``out`` (those with a manifest), sorted by name."""
    return sorted(
        (RunDir(p) for p in Path(out).iterdir() if (p / "manifest.json").exists()),
        key=lambda r: r.name,
    )
