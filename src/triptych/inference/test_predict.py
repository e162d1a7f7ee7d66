"""Batched top-k prediction of image files with the run's own preprocessing."""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil

import numpy as np
import pytest

from triptych.data.pipeline import make_dataset
from triptych.data.preprocessing import get_preprocessor
from triptych.data.sources import Examples
from triptych.errors import InvalidArgumentError, TriptychError
from triptych.inference import format_results, load, predict, predict_files
from triptych.inference.conftest import CLASSES
from triptych.inference.prediction import batch_predictor


def test_predict_folder_recursively_with_top_k(tiny_run, tiny_images):
    results = predict(tiny_run, [tiny_images], top_k=2)
    assert len(results) == 12
    for result in results:
        assert set(result) == {"path", "top_k"}
        assert len(result["top_k"]) == 2
        probs = [t["probability"] for t in result["top_k"]]
        assert probs == sorted(probs, reverse=True) and 0 <= sum(probs) <= 1 + 1e-6
        assert result["top_k"][0]["label"] == result["path"].split("/")[-2]  # the folder is the colour


def test_top_k_is_capped_at_the_number_of_classes(tiny_run, tiny_images):
    image = sorted(tiny_images.rglob("*.png"))[0]
    (result,) = predict(tiny_run, image, top_k=10)
    assert sorted(t["label"] for t in result["top_k"]) == CLASSES
    assert sum(t["probability"] for t in result["top_k"]) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InvalidArgumentError, match="top_k must be at least 1, got 0"):
        predict(tiny_run, image, top_k=0)
    with pytest.raises(ValueError, match="batch_size must be at least 1, got -1"):  # also a ValueError
        predict(tiny_run, image, batch_size=-1)


def test_batching_and_padding_do_not_change_results(tiny_run, tiny_images):
    loaded = load(tiny_run)
    one_batch = predict(loaded, [tiny_images], top_k=3, batch_size=64)
    small_batches = predict(loaded, [tiny_images], top_k=3, batch_size=5)
    assert [r["path"] for r in one_batch] == [r["path"] for r in small_batches]
    for a, b in zip(one_batch, small_batches):
        assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]
        np.testing.assert_allclose([t["probability"] for t in a["top_k"]], [t["probability"] for t in b["top_k"]], atol=1e-6)


def test_one_trace_for_every_batch_size(tiny_run, tiny_images, caplog):
    """Batches of 5 (the last one partial: 2 of 12 images), 64, 1 and 7, and a call with 2 files:
    all through one traced forward pass, and no TensorFlow retracing warning."""
    loaded = load(tiny_run)
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for batch_size in (5, 64, 1, 7):
            assert len(predict(loaded, [tiny_images], batch_size=batch_size)) == 12
        assert len(predict(loaded, sorted(tiny_images.rglob("*.png"))[:2])) == 2
    assert batch_predictor(loaded).experimental_get_tracing_count() == 1
    assert not [r.getMessage() for r in caplog.records if "retracing" in r.getMessage()]


def test_same_preprocessing_as_the_training_pipeline(tiny_run, tiny_images):
    """Predictions on files equal the model applied to the tf.data evaluation pipeline's batches."""
    loaded = load(tiny_run)
    files = sorted(tiny_images.rglob("*.png"))
    examples = Examples(labels=np.zeros(len(files), dtype=np.int64), ids=np.array([str(f) for f in files]))
    dataset = make_dataset(examples, 3, 32, 8, get_preprocessor("torch"), training=False, seed=0, cache=False)
    expected = loaded.model.predict(dataset, verbose=0)
    results = predict(loaded, files, top_k=3)
    got = np.array([[{t["label"]: t["probability"] for t in r["top_k"]}[c] for c in CLASSES] for r in results])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_undecodable_images_are_skipped_and_reported(tiny_run, tiny_images, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(tiny_images / "red", folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.warns(UserWarning, match=r"skipped .*broken.jpg: cannot decode image"):
        results = predict(tiny_run, folder)
    assert len(results) == 4 and all("broken" not in r["path"] for r in results)
    results, failures = predict_files(tiny_run, folder)
    assert [f.path for f in failures] == [str(folder / "broken.jpg")]


def test_all_images_undecodable_is_an_error(tiny_run, tmp_path):
    (tmp_path / "a.png").write_bytes(b"nope")
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(TriptychError, match=r"none of the 2 image\(s\) could be read"):
        predict_files(tiny_run, tmp_path)


def test_output_formats():
    results = [
        {"path": "a.png", "top_k": [{"label": "cat", "probability": 0.75}, {"label": "dog", "probability": 0.25}]},
        {"path": "dir/b,c.png", "top_k": [{"label": "dog", "probability": 0.5}, {"label": "cat", "probability": 0.5}]},
    ]
    assert json.loads(format_results(results, "json")) == results
    rows = list(csv.reader(io.StringIO(format_results(results, "csv"))))
    assert rows[0] == ["path", "label_1", "probability_1", "label_2", "probability_2"]
    assert rows[2] == ["dir/b,c.png", "dog", "0.500000", "cat", "0.500000"]
    table = format_results(results, "table").splitlines()
    assert table[0].split() == ["image", "top-1", "top-2"] and table[2].split() == ["a.png", "cat", "75.0%", "dog", "25.0%"]
