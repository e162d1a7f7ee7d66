"""triptych.data.images: one listing, one file check and one resize for training, audit and inference."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from triptych.data.audit import inspect_file
from triptych.data.images import list_images, resize
from triptych.data.sources import check_images, clear_check_cache
from triptych.inference.loading import ImageError, read_image


def png_claiming(path: Path, side: int) -> Path:
    """A PNG whose header claims side x side pixels, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(("side", "claim"), [(10_000, "10000x10000 = 100,000,000 pixels"),  # Pillow only warns
                                             (50_000, "2,500,000,000 pixels")])  # Pillow refuses to open it
def test_training_audit_and_inference_refuse_a_bomb_with_the_same_reason(tmp_path, side, claim):
    bomb = png_claiming(tmp_path / "bomb.png", side)
    reason = f"decompression bomb: the header claims {claim}, over the limit of 89,478,485; not decoded"
    clear_check_cache()
    assert [b.reason for b in check_images([str(bomb)])] == [reason]
    assert inspect_file(str(bomb)).bomb == reason
    with pytest.raises(ImageError) as err:
        read_image(bomb)
    assert str(err.value) == reason


def test_list_images_sorted_recursive_visible_images_only(tmp_path):
    for name in ("b/2.png", "a/1.JPG", "a.jpg", "a/.hidden.png", ".cache/x.png", "a/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    os.symlink(tmp_path, tmp_path / "b" / "loop")  # a link back up is not followed
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["a.jpg", "a/1.JPG", "b/2.png"]


def test_resize_is_the_same_in_a_tf_data_map_and_eagerly():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    eager = resize(picture, 12, 16).numpy()
    mapped = next(iter(tf.data.Dataset.from_tensors(picture).map(lambda x: resize(x, 12, 16)))).numpy()
    np.testing.assert_array_equal(eager, mapped)
    np.testing.assert_allclose(eager, tf.image.resize(picture.astype(np.float32), [12, 16], antialias=True).numpy())
    # At the target size the image is passed through, not blurred by a resize.
    np.testing.assert_array_equal(resize(picture, 20, 30).numpy(), picture.astype(np.float32))


def test_audit_and_data_commands_do_not_import_tensorflow():
    # A fresh interpreter: this test process may already hold TensorFlow from other tests.
    code = (
        "import sys, triptych.data.images, triptych.data.audit, triptych.data.wikiart, triptych.data.sources, "
        "triptych.data.digests, triptych.cli.audit, triptych.cli.data; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow imported'"
    )
    src = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": src}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
