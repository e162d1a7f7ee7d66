"""Shared test fixtures: small datasets, from ../shared when present, else generated."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests never read or write the user's cache (cached features, the file-digest memo): one fresh
# folder per test session, inherited by the CLI subprocesses and experiment processes tests start.
os.environ["TRIPTYCH_CACHE"] = tempfile.mkdtemp(prefix="triptych-test-cache-")

SHARED = Path(__file__).resolve().parent.parent / "shared"


def write_image_folder(root: Path, classes: list[str], per_class: int, size: int = 32, seed: int = 0) -> Path:
    """Class-per-subfolder PNGs whose mean colour depends on the class (so a model can learn it)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3)) + 40
            base[..., label % 3] += 150
            pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def cifar_mirror(tmp_path_factory) -> Path:
    """A TRIPTYCH_MIRROR folder with cifar10/train and cifar10/test: ../shared's, else a tiny fake."""
    shared = SHARED / "datasets"
    if (shared / "cifar10" / "train").is_dir():
        return shared
    root = tmp_path_factory.mktemp("mirror")
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    write_image_folder(root / "cifar10" / "train", classes, 30, seed=1)
    write_image_folder(root / "cifar10" / "test", classes, 10, seed=2)
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "images", ["cats", "dogs", "owls"], 20)
