"""Fixtures for the inference tests: tiny models and a hand-made run directory.

The run directory follows the contract of :mod:`triptych.rundir` (model.keras saved without
optimizer, manifest.json, metrics.json, predictions.csv) but holds a tiny conv net trained in
a second on coloured squares, so that predictions are meaningful and every test stays fast.

Its manifest names the registry model ``resnet18`` (:data:`PREPROCESSING_FROM`) although the
network is the 2-conv ``tiny`` net: inference takes only the preprocessing (resnet18's
``torch``) from that name, as it does for a real run, and a real ResNet-18 (11 M parameters)
would make every export and Grad-CAM test many times slower.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers
from PIL import Image

from triptych.data.preprocessing import get_preprocessor
from triptych.inference.loading import preprocess_images

CLASSES = ["blue", "green", "red"]  # sorted, as a folder dataset's classes would be
COLOUR_CHANNEL = {"red": 0, "green": 1, "blue": 2}
# The registry model the tiny run's manifest names, for its preprocessing only (see above).
PREPROCESSING_FROM = "resnet18"


def colour_image(name: str, rng: np.random.Generator, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    pixels = np.zeros((*size, 3)) + 40
    pixels[..., COLOUR_CHANNEL[name]] += 150
    return np.clip(pixels + rng.normal(0, 25, pixels.shape), 0, 255).astype(np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def tiny_convnet(num_classes: int, size: int = 32, name: str = "tiny"):
    """Two convolutions, BatchNorm, global pooling and a softmax: a classifier in miniature."""
    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(16, 3, padding="same", name="conv2")(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished run directory with a tiny colour classifier (preprocessing: torch).

    Its images are 40x48 (so inference must resize them to 32x32). Three test images carry a
    wrong ``y_true`` so that the run has mistakes for Grad-CAM to explain.
    """
    root = tmp_path_factory.mktemp("inference")
    run = root / "runs" / "tiny"
    run.mkdir(parents=True)
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    train_x = np.stack([colour_image(CLASSES[i % 3], rng) for i in range(120)]).astype(np.float32)
    train_y = np.array([i % 3 for i in range(120)])
    model = tiny_convnet(len(CLASSES))
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy")
    model.fit(get_preprocessor("torch")(train_x), train_y, epochs=8, batch_size=30, verbose=0)
    inference = keras.Model(model.inputs, model.outputs, name=model.name)  # as the runner saves it
    inference.save(run / "model.keras")

    paths, labels = [], []
    for i in range(12):
        label = CLASSES[i % 3]
        paths.append(write_png(root / "images" / label / f"{i:03d}.png", colour_image(label, rng, (40, 48))))
        labels.append(label)
    probs = model.predict(preprocess_images([np.asarray(_read(p)) for p in paths], (32, 32), "torch"), verbose=0)
    assert (probs.argmax(1) == [CLASSES.index(l) for l in labels]).all(), "the tiny model did not learn colours"
    noisy = labels.copy()
    for i in (0, 1, 2):  # label noise: the model's (right) answers become mistakes
        noisy[i] = CLASSES[(CLASSES.index(labels[i]) + 1) % 3]
    with open(run / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "y_true", "y_pred"] + [f"prob_{c}" for c in CLASSES])
        for path, truth, row in zip(paths, noisy, probs):
            writer.writerow([str(path), truth, CLASSES[int(row.argmax())], *map(float, row)])
    manifest = {"model": PREPROCESSING_FROM, "class_names": CLASSES, "image_size": 32, "status": "done"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "metrics.json").write_text(json.dumps({"model": PREPROCESSING_FROM, "class_names": CLASSES}))
    return run


@pytest.fixture(scope="session")
def tiny_images(tiny_run) -> Path:
    return tiny_run.parent.parent / "images"


def _read(path: Path):
    return Image.open(path).convert("RGB")
