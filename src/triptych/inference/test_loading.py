"""Safe loading of run directories and .keras files, and every bad input as one clear error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from triptych.errors import TriptychError
from triptych.inference.conftest import CLASSES, colour_image, tiny_convnet, write_png
from triptych.inference.loading import (
    ImageError,
    collect_images,
    load,
    load_keras_model,
    read_image,
)


def test_run_directory_gives_model_classes_size_and_preprocessing(tiny_run):
    loaded = load(tiny_run)
    assert loaded.class_names == CLASSES
    assert loaded.image_size == (32, 32)
    assert loaded.preprocessing == "torch"  # from the manifest's registry model name
    assert loaded.run_dir == tiny_run and loaded.source == tiny_run / "model.keras"
    assert load(loaded) is loaded


def test_bare_keras_file_uses_sibling_manifest(tiny_run):
    assert load(tiny_run / "model.keras").class_names == CLASSES


def test_bare_keras_file_without_metadata(tiny_run, tmp_path):
    model = tmp_path / "alone.keras"
    shutil.copy(tiny_run / "model.keras", model)
    with pytest.raises(TriptychError, match="pass preprocessing= one of caffe, none, tf, torch"):
        load(model)
    loaded = load(model, preprocessing="tf")
    assert loaded.class_names == ["class_0", "class_1", "class_2"] and loaded.preprocessing == "tf"
    assert loaded.run_dir is None
    with pytest.raises(TriptychError, match="unknown preprocessing 'bogus'"):
        load(model, preprocessing="bogus")


def test_registry_model_name_gives_preprocessing_without_manifest(tmp_path):
    # Registry models are named after their architecture (the model here only borrows the name).
    tiny_convnet(2, name="xception").save(tmp_path / "x.keras")
    assert load(tmp_path / "x.keras").preprocessing == "tf"


def test_lambda_layer_is_refused_before_keras_runs_it(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="doubler")(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x))
    keras.Model(inputs, outputs).save(tmp_path / "lambda.keras")
    with pytest.raises(TriptychError, match=r"refused to load: it contains a Lambda layer \(doubler\)") as err:
        load_keras_model(tmp_path / "lambda.keras")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("notes.txt", b"hello", "not a model file"),
        ("junk.keras", b"this is not a zip", "not a valid .keras file"),
        ("weights.h5", b"\x89HDF\r\n", "legacy HDF5 models are not supported"),
    ],
)
def test_not_a_model_file(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(TriptychError, match=message):
        load_keras_model(tmp_path / name)


def test_truncated_and_corrupted_keras_files(tiny_run, tmp_path):
    data = (tiny_run / "model.keras").read_bytes()
    (tmp_path / "half.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(TriptychError, match="half.keras: (not a valid|corrupted)"):
        load_keras_model(tmp_path / "half.keras")
    # Flip bytes inside the stored weights: the zip CRC catches it.
    corrupted = bytearray(data)
    middle = len(corrupted) // 2
    corrupted[middle : middle + 64] = bytes(b ^ 0xFF for b in corrupted[middle : middle + 64])
    (tmp_path / "bad.keras").write_bytes(bytes(corrupted))
    with pytest.raises(TriptychError, match="bad.keras: (corrupted|not a valid|cannot load)"):
        load_keras_model(tmp_path / "bad.keras")


def test_missing_paths(tmp_path):
    with pytest.raises(TriptychError, match="no such file"):
        load(tmp_path / "nope.keras")
    with pytest.raises(TriptychError, match="not a run directory"):
        load(tmp_path)


def test_class_names_that_do_not_fit_the_model(tiny_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "model.keras", run / "model.keras")
    (run / "manifest.json").write_text(json.dumps({"model": "resnet18", "class_names": ["a", "b"]}))
    with pytest.raises(TriptychError, match="lists 2 class names but model.keras has 3 outputs"):
        load(run)


def test_not_a_classifier(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 3))
    keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs)).save(tmp_path / "seg.keras")
    with pytest.raises(TriptychError, match="not an image classifier"):
        load(tmp_path / "seg.keras", preprocessing="none")


def test_collect_images_recursive_sorted_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    write_png(tmp_path / "imgs" / "b" / "2.png", colour_image("red", rng))
    write_png(tmp_path / "imgs" / "a" / "1.PNG", colour_image("red", rng))
    (tmp_path / "imgs" / "readme.txt").write_text("not an image")
    single = write_png(tmp_path / "x.png", colour_image("red", rng))
    files = collect_images([tmp_path / "imgs", single, single])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["imgs/a/1.PNG", "imgs/b/2.png", "x.png"]
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(TriptychError, match="no images in this folder"):
        collect_images([tmp_path / "empty"])
    with pytest.raises(TriptychError, match="no such file or folder"):
        collect_images([tmp_path / "missing.png"])


def test_read_image_reports_undecodable_files(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageError, match="cannot decode image"):
        read_image(tmp_path / "broken.png")
    grey = tmp_path / "grey.png"
    from PIL import Image

    Image.fromarray(np.full((5, 7), 128, np.uint8)).save(grey)
    assert read_image(grey).shape == (5, 7, 3)


def test_tiny_convnet_helper_is_a_classifier():
    assert tiny_convnet(3).output_shape == (None, 3)


def test_decompression_bombs_are_not_decoded(tmp_path):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # A valid PNG header claiming 20000 x 20000 pixels (400 M): only the header is ever read.
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    with pytest.raises(ImageError, match="decompression bomb"):
        read_image(bomb)
