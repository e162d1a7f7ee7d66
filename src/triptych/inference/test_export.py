"""Exports to SavedModel / ONNX / TFLite, each proven to compute what the Keras model computes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import triptych.inference.exporting as export_module
from triptych.errors import InvalidArgumentError, TriptychError
from triptych.inference import export


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("fmt, name", [("savedmodel", "tiny_savedmodel"), ("onnx", "tiny.onnx"), ("tflite", "tiny.tflite")])
def test_float32_exports_match_the_keras_model(tiny_run, tmp_path, fmt, name):
    result = export(tiny_run, fmt, tmp_path / name)
    assert result.path == tmp_path / name and result.path.exists() and result.size_bytes > 0
    assert result.parity.max_abs_diff <= 1e-4
    assert result.parity.top1_agree == result.parity.n == 12
    assert result.parity.inputs == "real images from predictions.csv"
    assert result.parity.line().startswith("parity: max |diff| = ") and "top-1 agreement = 12/12" in result.parity.line()
    metadata = json.loads(result.metadata.read_text())
    assert metadata["class_names"] == ["blue", "green", "red"] and metadata["input"]["preprocessing"] == "torch"
    assert metadata["input"]["shape"] == [None, 32, 32, 3]
    assert not _leftovers(tmp_path)


@pytest.mark.parametrize("quantize", ["float16", "int8"])
def test_quantized_tflite_reports_parity(tiny_run, tmp_path, quantize):
    result = export(tiny_run, "tflite", tmp_path / f"tiny_{quantize}.tflite", quantize=quantize)
    assert result.quantize == quantize and result.path.is_file()
    assert np.isfinite(result.parity.max_abs_diff) and result.parity.max_abs_diff < 0.5
    assert result.parity.top1_agree >= 10  # an easy task: quantisation must not change many answers


def test_export_refuses_to_overwrite_then_replaces(tiny_run, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_text("old")
    with pytest.raises(TriptychError, match=r"already exists; pass overwrite=True"):
        export(tiny_run, "onnx", out)
    export(tiny_run, "onnx", out, overwrite=True, samples=2)
    assert out.stat().st_size > 1000


def test_parity_failure_writes_nothing(tiny_run, tmp_path, monkeypatch):
    real = export_module._run_savedmodel
    monkeypatch.setattr(export_module, "_run_savedmodel", lambda path, x: real(path, x) + 1e-3)
    with pytest.raises(TriptychError, match=r"savedmodel export does not match the Keras model: max \|diff\| = 0.001 > 0.0001"):
        export(tiny_run, "savedmodel", tmp_path / "sm")
    assert not (tmp_path / "sm").exists() and not _leftovers(tmp_path)


def test_random_inputs_without_run_images(tiny_run, tmp_path):
    model = tmp_path / "bare.keras"
    shutil.copy(tiny_run / "model.keras", model)
    result = export(model, "savedmodel", tmp_path / "sm", preprocessing="torch", samples=3)
    assert result.parity.n == 3 and result.parity.inputs.startswith("random images")
    (tmp_path / "sm" / "stale.txt").write_text("from the first export")
    export(model, "savedmodel", tmp_path / "sm", preprocessing="torch", samples=1, overwrite=True)
    assert (tmp_path / "sm" / "saved_model.pb").is_file() and not (tmp_path / "sm" / "stale.txt").exists()
    assert not _leftovers(tmp_path)


def test_bad_export_arguments(tiny_run, tmp_path):
    with pytest.raises(InvalidArgumentError, match="quantize applies to fmt=tflite only, not onnx"):
        export(tiny_run, "onnx", tmp_path / "m.onnx", quantize="int8")
    with pytest.raises(InvalidArgumentError, match="fmt must be one of savedmodel, onnx, tflite, got 'pt'"):
        export(tiny_run, "pt", tmp_path / "m.pt")
    with pytest.raises(InvalidArgumentError, match="samples must be at least 1, got 0"):
        export(tiny_run, "onnx", tmp_path / "m.onnx", samples=0)
