"""Synthetic run directories for tests and demos of evaluation and reporting (no training).

Runs made with the same ``labels_seed`` share their test images (paths and true classes), so they
can be compared with McNemar's test; ``skill`` sets how separable the fake model's scores are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import softmax

from triptych.evaluation.metrics import evaluate_run
from triptych.io import atomic_write_json, atomic_write_text
from triptych.rundir import RunDir

ART_CLASSES = ["Romanticism", "Expressionism", "Post_Impressionism"]


def synthetic_predictions(
    n: int = 300,
    class_names: list[str] | None = None,
    *,
    skill: float = 2.0,
    seed: int = 0,
    labels_seed: int = 1234,
) -> pd.DataFrame:
    """A predictions table in the run-directory format with softmax probabilities."""
    names = list(class_names or ART_CLASSES)
    y_true = np.random.default_rng(labels_seed).integers(0, len(names), size=n)
    logits = np.random.default_rng(seed).normal(size=(n, len(names))) + skill * np.eye(len(names))[y_true]
    probs = softmax(logits, axis=1)
    frame = pd.DataFrame({
        "path": [f"test/{names[t]}/img_{i:05d}.jpg" for i, t in enumerate(y_true)],
        "y_true": np.asarray(names)[y_true],
        "y_pred": np.asarray(names)[probs.argmax(axis=1)],
    })
    for i, name in enumerate(names):
        frame[f"prob_{name}"] = probs[:, i]
    return frame


def synthetic_history(epochs: int = 5, *, seed: int = 0, fine_tune_from: int | None = 3) -> pd.DataFrame:
    """A plausible history.csv; epochs from ``fine_tune_from`` on are in phase "fine-tune"."""
    rng = np.random.default_rng(seed)
    epoch = np.arange(1, epochs + 1)
    accuracy = 1 - 0.6 * np.exp(-epoch / 2.5) + rng.normal(0, 0.01, epochs)
    val_accuracy = accuracy - 0.05 + rng.normal(0, 0.015, epochs)
    frame = pd.DataFrame({
        "epoch": epoch,
        "accuracy": accuracy,
        "loss": 1.2 * np.exp(-epoch / 2.5) + 0.1,
        "val_accuracy": val_accuracy,
        "val_loss": 1.3 * np.exp(-epoch / 3) + 0.2,
        "learning_rate": np.where(epoch < (fine_tune_from or epochs + 1), 1e-3, 1e-5),
    })
    if fine_tune_from is not None:
        frame["phase"] = np.where(epoch < fine_tune_from, "head", "fine-tune")
    return frame


def write_synthetic_run(
    root: str | Path,
    name: str,
    *,
    model: str = "resnet50",
    status: str = "done",
    n_test: int = 300,
    skill: float = 2.0,
    seed: int = 0,
    epochs: int = 5,
    evaluate: bool = True,
    manifest: dict[str, Any] | None = None,
) -> RunDir:
    """Write ``root/name`` with manifest, config, history, predictions (and metrics.json)."""
    run = RunDir(Path(root) / name)
    run.root.mkdir(parents=True, exist_ok=True)
    fields = {
        "experiment": name, "model": model, "weights": "imagenet", "expected_pretrained": True, "seed": seed,
        "data_fingerprint": "sha256:0123456789abcdef", "git_sha": "0000000", "started_at": "2024-01-01T10:00:00",
        "ended_at": "2024-01-01T10:12:00", "status": status, "reason": None,
        "versions": {"python": "3.11", "keras": "3.15.1", "tensorflow": "2.21.0"},
    }
    atomic_write_json(run.manifest, {**fields, **(manifest or {})})
    atomic_write_text(run.config, f"name: {name}\nmodel: {model}\nseed: {seed}\nepochs: {epochs}\nbatch_size: 32\n")
    synthetic_history(epochs, seed=seed).to_csv(run.history, index=False)
    if status != "running":
        synthetic_predictions(n_test, skill=skill, seed=seed).to_csv(run.predictions, index=False)
    if evaluate and status == "done":
        evaluate_run(run.root, {"model": model, "params": 1_000_000 + seed, "train_seconds": 720.0})
    return run

