"""Grad-CAM: the right layer for every architecture, nested models, and maps that follow the object."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from keras import layers
from PIL import Image

from triptych.errors import InvalidArgumentError, MissingFileError, TriptychError
from triptych.inference import (
    build_gradcam_model,
    explain,
    find_target_layer,
    gradcam_for_run,
)
from triptych.inference.gradcam import overlay, upsample
from triptych.models import build

PATCH = 8
SIZE = 32


def patch_image(rng: np.random.Generator, corner: tuple[int, int] | None) -> np.ndarray:
    image = rng.uniform(0.0, 0.35, (SIZE, SIZE, 3)).astype(np.float32)
    if corner is not None:
        row, col = corner
        image[row : row + PATCH, col : col + PATCH] = 1.0
    return image


@pytest.fixture(scope="module")
def patch_detector():
    """A tiny conv net trained (in seconds) to tell a bright square from none, wherever it is."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = 512
    corners = [tuple(rng.integers(0, SIZE - PATCH + 1, 2)) if i % 2 else None for i in range(n)]
    x = np.stack([patch_image(rng, c) for c in corners])
    y = np.array([0 if c is None else 1 for c in corners])
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    h = layers.MaxPooling2D(2, name="pool1")(h)
    h = layers.Conv2D(16, 3, padding="same", name="conv2")(h)
    h = layers.ReLU(name="conv2_relu")(h)
    h = layers.GlobalAveragePooling2D(name="avg_pool")(h)
    outputs = layers.Dense(2, activation="softmax", name="predictions")(h)
    model = keras.Model(inputs, outputs, name="patch_detector")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=6, batch_size=64, verbose=0)
    assert history.history["accuracy"][-1] > 0.95
    return model


def test_heat_map_moves_with_the_object(patch_detector):
    assert find_target_layer(patch_detector) == "conv2_relu"  # the last feature map
    gradcam = build_gradcam_model(patch_detector)
    rng = np.random.default_rng(1)
    corners = [(2, 3), (21, 22), (3, 21), (22, 2)]
    images = np.stack([patch_image(rng, c) for c in corners])
    cams, probs = gradcam(images, np.ones(len(corners), dtype=int))  # explain "patch"
    assert (probs.argmax(1) == 1).all()
    centres = [np.array(c) + PATCH / 2 - 0.5 for c in corners]
    peaks = []
    for cam, own in zip(cams, centres):
        full = upsample(cam, SIZE, SIZE)
        peak = np.array(np.unravel_index(np.argmax(full), full.shape))
        peaks.append(peak)
        distances = [np.linalg.norm(peak - centre) for centre in centres]
        assert np.linalg.norm(peak - own) == min(distances), (peak, own)
        assert np.linalg.norm(peak - own) < 8
    assert np.linalg.norm(peaks[0] - peaks[1]) > 15  # opposite corners, far-apart peaks


def test_resnet_target_is_the_last_stage4_block():
    model = build("resnet18", 3, (32, 32, 3), stem="cifar")
    assert find_target_layer(model) == "stage4_block2_out"
    gradcam = build_gradcam_model(model)
    cams, probs = gradcam(np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32))
    assert cams.shape == (2, 4, 4) and probs.shape == (2, 3)
    assert cams.min() >= 0 and cams.max() <= 1


def test_calls_of_any_batch_size_trace_once_and_cause_no_retracing_warning():
    """Keras runs a grouped convolution (ConvNeXt's) as its own tf.function: called eagerly, every
    Grad-CAM call traced it again and TensorFlow's "triggered tf.function retracing" warning reached the log."""
    import logging

    import tensorflow as tf

    inputs = keras.Input((16, 16, 4))
    x = layers.Conv2D(8, 3, padding="same", groups=2, name="grouped")(inputs)
    x = layers.GlobalAveragePooling2D()(layers.Activation("relu")(x))
    model = keras.Model(inputs, layers.Dense(3, activation="softmax")(x))
    gradcam = build_gradcam_model(model, "grouped")
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    tf.get_logger().addHandler(handler)
    try:
        for batch in (1, 2, 3, 4, 5, 6, 7, 2):
            cams, probs = gradcam(np.random.default_rng(batch).normal(size=(batch, 16, 16, 4)).astype(np.float32))
            assert cams.shape == (batch, 16, 16) and probs.shape == (batch, 3)
    finally:
        tf.get_logger().removeHandler(handler)
    assert gradcam._step.experimental_get_tracing_count() == 1  # one trace for every batch size
    # TensorFlow counts traces per function's code, across instances: earlier tests' GradCamModels
    # may add up to a warning about ours, never about Keras's grouped convolution any more.
    assert not [m for m in messages if "retracing" in m and "_conv_xla" in m], messages


def test_bf16_model_scores_in_float32_without_the_deprecated_sparse_matmul(monkeypatch):
    """A mixed_bfloat16 model's bf16 activations times its float32 kernel would take TensorFlow's
    deprecated mixed-dtype ``sparse_matmul`` (a deprecation warning in the user's log)."""
    from tensorflow.python.ops import math_ops

    from triptych.training.precision import precision_scope

    def refuse(*args, **kwargs):
        raise AssertionError("Grad-CAM took the mixed-dtype sparse_matmul path")

    monkeypatch.setattr(math_ops, "sparse_matmul", refuse)
    with precision_scope("bf16"):
        model = build("resnet18", 3, (32, 32, 3), stem="cifar")
    cams, probs = build_gradcam_model(model)(np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32))
    assert cams.shape == (2, 4, 4) and np.isfinite(cams).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-2)


def test_eager_and_traced_grad_cam_give_the_same_maps():
    """gradcam_for_run explains its few mistakes eagerly (no trace to pay): the same maps as traced."""
    model = build("resnet18", 3, (32, 32, 3), stem="cifar")
    batch = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    traced, eager = build_gradcam_model(model), build_gradcam_model(model, traced=False)
    assert not eager.traced
    for expected, got in zip(traced(batch, np.array([0, 1, 2])), eager(batch, np.array([0, 1, 2])), strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("arch, size, feature_size", [("densenet121", 64, 2), ("xception", 71, 3)])
def test_nested_backbones_are_explained_through_base(arch, size, feature_size):
    model = build(arch, 3, (size, size, 3))  # weights=None: no download
    assert find_target_layer(model) == "base"
    gradcam = build_gradcam_model(model)
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    cams, probs = gradcam(x)
    assert cams.shape == (2, feature_size, feature_size)
    # The gradient model rebuilt through the nested base computes exactly the model's output.
    np.testing.assert_allclose(probs, model.predict_on_batch(x), atol=1e-5)
    # A layer inside the nested backbone can be named too.
    inner = model.get_layer("base").layers[-4].name
    assert build_gradcam_model(model, inner).layer == f"base/{inner}"
    with pytest.raises(TriptychError, match="has no layer 'nope'"):
        build_gradcam_model(model, "nope")


def test_overlay_is_upscaled_rgb():
    image = np.zeros((32, 32, 3), np.uint8)
    cam = np.zeros((4, 4), np.float32)
    cam[0, 0] = 1.0
    out = overlay(image, cam)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    red = out[..., 0].astype(int)
    assert red[:20, :20].mean() > red[-20:, -20:].mean() + 40  # the hot corner is red (jet), the cold one blue


def test_explain_writes_overlays(tiny_run, tiny_images, tmp_path):
    explained, skipped = explain(tiny_run, [tiny_images / "red"], tmp_path / "maps", class_name="blue")
    assert len(explained) == 4 and not skipped
    for item in explained:
        assert item["label"] == "red" and item["explained"] == "blue" and item["layer"] == "relu2"
        assert (tmp_path / "maps" / f"{item['path'].rsplit('/', 1)[-1][:-4]}_gradcam.png").is_file()
    with pytest.raises(InvalidArgumentError, match=r"class_name must be one of the model's classes \(blue, green, red\), got 'purple'"):
        explain(tiny_run, [tiny_images / "red"], tmp_path / "maps", class_name="purple")
    with pytest.raises(InvalidArgumentError, match="batch_size must be at least 1, got 0"):
        explain(tiny_run, [tiny_images / "red"], tmp_path / "maps", batch_size=0)
    with pytest.raises(InvalidArgumentError, match="out_dir is required"):
        explain(tiny_run, [tiny_images / "red"], None)


def test_gradcam_for_run_picks_the_most_confident_mistakes(tiny_run):
    chosen = gradcam_for_run(tiny_run, n=2)
    frame = pd.read_csv(tiny_run / "predictions.csv")
    mistakes = frame[frame.y_true != frame.y_pred]
    confidence = [row[f"prob_{row.y_pred}"] for _, row in mistakes.iterrows()]
    expected = mistakes.assign(c=confidence).sort_values("c", ascending=False).head(2)
    assert [c[0] for c in chosen] == expected["path"].tolist()
    for (path, true, pred, prob, png), (_, row) in zip(chosen, expected.iterrows()):
        assert (true, pred) == (row.y_true, row.y_pred) and prob == pytest.approx(row.c)
        assert png.startswith(str(tiny_run / "gradcam"))
        with Image.open(png) as overlay_png:  # 40x48 images, upscaled 6x for visibility
            assert overlay_png.format == "PNG" and overlay_png.size == (288, 240)
    index = json.loads((tiny_run / "gradcam" / "gradcam.json").read_text())
    assert [item["overlay"] for item in index["items"]] == [c[4].rsplit("/", 1)[-1] for c in chosen]
    assert len(gradcam_for_run(tiny_run, n=10)) == 3  # only three mistakes in the run
    assert len(list((tiny_run / "gradcam").glob("*.png"))) == 3


def test_gradcam_for_run_takes_the_model_in_memory_instead_of_reading_it(tiny_run, tmp_path, monkeypatch):
    from triptych.inference import loading

    from_file = gradcam_for_run(tiny_run, n=2, out_dir=tmp_path / "file")
    model = loading.load_keras_model(tiny_run / "model.keras")
    monkeypatch.setattr(loading, "load_keras_model", lambda path: pytest.fail("model.keras read again"))
    in_memory = gradcam_for_run(tiny_run, n=2, out_dir=tmp_path / "memory", model=model)
    assert [c[:4] for c in in_memory] == [c[:4] for c in from_file]
    for a, b in zip(in_memory, from_file):
        assert Path(a[4]).read_bytes() == Path(b[4]).read_bytes()


def test_gradcam_for_run_refuses_what_the_cli_refuses(tiny_run, tmp_path):
    with pytest.raises(InvalidArgumentError, match="n must be at least 1, got 0"):
        gradcam_for_run(tiny_run, n=0)
    with pytest.raises(InvalidArgumentError, match="not a run directory; to explain a model file, name the images"):
        gradcam_for_run(tiny_run / "model.keras")
    with pytest.raises(MissingFileError, match="not a run directory"):
        gradcam_for_run(tmp_path / "gone")
    with pytest.raises(MissingFileError, match="no predictions"):
        gradcam_for_run(tmp_path)
