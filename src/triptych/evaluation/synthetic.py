"""Synthetic run directories for tests and demos of evaluation and reporting (no training).

Runs made with the same ``labels_seed`` share their test images (paths and true classes), so they
can be compared with McNemar's test; ``skill`` sets how separable the fake model's scores are.
With ``extras=True`` a run also gets what the training runner writes after evaluation --
``profile.json`` and a ``gradcam/`` folder (two tiny PNG overlays and ``gradcam.json``) -- and a
manifest with the runner's optional fields (``family``, ``data.note``, ``feature_cache``,
``phases_done``, ``peak_rss_mb``); :func:`write_synthetic_diagrams` writes ``OUT/diagrams/``.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import softmax

from triptych.evaluation.metrics import evaluate_run
from triptych.io import atomic_write_bytes, atomic_write_json, atomic_write_text
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
    extras: bool = False,
) -> RunDir:
    """Write ``root/name`` with manifest, config, history, predictions (and metrics.json);
    ``extras`` adds profile.json, gradcam/ and the runner's optional manifest fields."""
    run = RunDir(Path(root) / name)
    run.root.mkdir(parents=True, exist_ok=True)
    fields = {
        "experiment": name, "model": model, "weights": "imagenet", "expected_pretrained": True, "seed": seed,
        "data_fingerprint": "sha256:0123456789abcdef", "git_sha": "0000000", "started_at": "2024-01-01T10:00:00",
        "ended_at": "2024-01-01T10:12:00", "status": status, "reason": None,
        "versions": {"python": "3.11", "keras": "3.15.1", "tensorflow": "2.21.0"},
    }
    if extras:
        fields.update({
            "family": model_family(model), "image_size": SYNTHETIC_PROFILES.get(model, {}).get("image_size", 224),
            "data": {"origin": "synthetic", "note": "data/wikiart not found: fell back to cifar10",
                     "train": 900, "val": 100, "test": n_test,
                     "fingerprint": {"train": "sha256:aa", "val": "sha256:bb", "test": "sha256:cc"}},
            "feature_cache": {"train_features": [900, 2048], "views": 1, "dtype": "float16", "hit": False, "seconds": 12.5},
            "phases_done": ["head", "fine-tune"], "train_seconds": 650.0 + 40 * seed,
        })
        if status == "done":
            fields["peak_rss_mb"] = 3000.0 + 250 * seed
    atomic_write_json(run.manifest, {**fields, **(manifest or {})})
    atomic_write_text(run.config, f"name: {name}\nmodel: {model}\nseed: {seed}\nepochs: {epochs}\nbatch_size: 32\n")
    synthetic_history(epochs, seed=seed).to_csv(run.history, index=False)
    if status != "running":
        synthetic_predictions(n_test, skill=skill, seed=seed).to_csv(run.predictions, index=False)
    if evaluate and status == "done":
        params = (SYNTHETIC_PROFILES.get(model, {}).get("params", 1_000_000) if extras else 1_000_000) + seed
        evaluate_run(run.root, {"model": model, "params": params, "train_seconds": 720.0})
    if extras and status == "done":
        write_synthetic_profile(run, model, seed=seed)
        write_synthetic_gradcam(run, n=2)
    return run


# --- what the runner writes besides the predictions ------------------------------------------

# Plausible profile.json numbers per registry model (published parameter / multiply-add counts).
SYNTHETIC_PROFILES: dict[str, dict[str, Any]] = {
    "resnet50": {"params": 23_540_000, "macs": 4_110_000_000, "image_size": 224, "latency_ms": 9.8, "throughput_img_s": 410.0},
    "xception": {"params": 20_870_000, "macs": 8_380_000_000, "image_size": 299, "latency_ms": 14.2, "throughput_img_s": 230.0},
    "densenet121": {"params": 7_040_000, "macs": 2_870_000_000, "image_size": 224, "latency_ms": 18.5, "throughput_img_s": 520.0},
}


def model_family(model: str) -> str:
    """``resnet50`` -> ``resnet``, ``densenet121`` -> ``densenet`` (the registry's families)."""
    return re.sub(r"\d+$", "", model)


def write_synthetic_profile(run: RunDir, model: str = "resnet50", *, seed: int = 0) -> Path:
    """``profile.json`` in the format of :func:`triptych.models.profile.profile_keras_model`."""
    base = SYNTHETIC_PROFILES.get(model, {"params": 1_000_000, "macs": 500_000_000, "image_size": 32,
                                          "latency_ms": 2.0, "throughput_img_s": 2000.0})
    params, macs = base["params"] + seed, base["macs"]
    profile = {
        "input_shape": [base["image_size"], base["image_size"], 3],
        "params": params, "trainable_params": params - 50_000, "non_trainable_params": 50_000,
        "macs": macs, "gmacs": round(macs / 1e9, 3), "gflops": round(2 * macs / 1e9, 3),
        "weights_mb": round(params * 4 / 2**20, 1),
        "latency_ms": base["latency_ms"], "throughput_img_s": base["throughput_img_s"], "batch_size": 32,
        "device": "GPU (1)", "image_size": base["image_size"],
    }
    return atomic_write_json(run.root / "profile.json", profile)


def write_synthetic_gradcam(run: RunDir, n: int = 2) -> Path:
    """``gradcam/gradcam.json`` and tiny PNG overlays for the ``n`` most confident mistakes."""
    preds = pd.read_csv(run.predictions)
    wrong = preds[preds["y_true"] != preds["y_pred"]].copy()
    wrong["prob"] = [row[f"prob_{row['y_pred']}"] for _, row in wrong.iterrows()]
    wrong = wrong.sort_values("prob", ascending=False).head(n)
    folder = run.root / "gradcam"
    items = []
    for rank, (_, row) in enumerate(wrong.iterrows(), start=1):
        name = f"{rank:02d}_{Path(row['path']).stem}_true-{row['y_true']}_pred-{row['y_pred']}.png"
        atomic_write_bytes(folder / name, tiny_png(64, 64, seed=rank, heat=True))
        items.append({"path": row["path"], "true": row["y_true"], "pred": row["y_pred"],
                      "prob": float(row["prob"]), "overlay": name})
    return atomic_write_json(folder / "gradcam.json", {
        "layer": "stage4_block3_out", "explains": "the predicted class of the most confident mistakes", "items": items})


def write_synthetic_diagrams(out: str | Path, models: list[str]) -> list[Path]:
    """``out/diagrams/<model>.svg`` and ``.png`` (and ``xception_separable``), as the runner draws them."""
    written = []
    for model in dict.fromkeys(models):
        for stem in [model] + ([f"{model}_separable"] if model_family(model) == "xception" else []):
            target = Path(out) / "diagrams" / stem
            written.append(atomic_write_text(target.with_suffix(".svg"), tiny_svg(stem)))
            written.append(atomic_write_bytes(target.with_suffix(".png"), tiny_png(160, 90, seed=len(stem))))
    return written


def tiny_png(width: int = 32, height: int = 32, *, seed: int = 0, heat: bool = False) -> bytes:
    """A small RGB PNG (a gradient, or with ``heat`` a grey image with a red blob), no imaging library."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    if heat:
        cy, cx = 0.3 + 0.1 * (seed % 4), 0.6 - 0.1 * (seed % 3)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.03)
        grey = 0.45 + 0.2 * np.sin(8 * x + seed)
        rgb = np.stack([grey + 0.55 * blob, grey * (1 - 0.5 * blob), grey * (1 - 0.7 * blob)], axis=-1)
    else:
        rgb = np.stack([0.3 + 0.6 * x, 0.5 + 0.3 * y, np.full_like(x, 0.8 - 0.1 * (seed % 5))], axis=-1)
    pixels = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def tiny_svg(title: str) -> str:
    """A three-box SVG drawing standing in for a graphviz architecture diagram."""
    boxes = "".join(
        f'<rect x="{20 + 150 * i}" y="50" width="120" height="40" rx="6" fill="#e8eef8" stroke="#1f5fae"/>'
        f'<text x="{80 + 150 * i}" y="75" text-anchor="middle" font-size="14" font-family="sans-serif">{label}</text>'
        for i, label in enumerate(("input", "block", "output"))
    )
    arrows = "".join(f'<line x1="{140 + 150 * i}" y1="70" x2="{170 + 150 * i}" y2="70" stroke="#333"/>' for i in range(2))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="460" height="120" viewBox="0 0 460 120">'
            f'<text x="230" y="28" text-anchor="middle" font-size="16" font-family="sans-serif">{title} (synthetic)</text>'
            f"{boxes}{arrows}</svg>\n")

