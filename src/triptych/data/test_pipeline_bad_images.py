"""Bad and odd image files: what the pre-training check finds, and what the pipeline decodes.

The CLI side (one error line, --skip-bad, the manifest) is in tests/test_bad_inputs.py.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from triptych.data import pipeline, sources
from triptych.data.sources import BadImagesError, check_images, clear_check_cache, list_image_folder, screen_images
from triptych.errors import TriptychError


@pytest.fixture(autouse=True)
def fresh_cache():
    clear_check_cache()
    yield
    clear_check_cache()


def picture(seed: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def bomb_png(path: Path, side: int = 50_000) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def corpus(tmp_path) -> tuple[dict[str, str], list[str]]:
    """``(bad file -> expected reason, valid odd files)`` in one folder."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    picture(1).save(folder / "ok.jpg", quality=90)
    jpeg = (folder / "ok.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "no end marker.jpg").write_bytes(jpeg[:-2])  # Pillow opens it; TensorFlow does not
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    picture(2).save(folder / "tiff.png", format="TIFF")
    picture(3).convert("1").save(folder / "one bit.bmp")
    bomb_png(folder / "bomb.png")
    bomb_png(folder / "just over the limit.png", side=9_500)  # between Pillow's warning and error
    os.symlink("loop.jpg.2", folder / "loop.jpg")
    os.symlink("loop.jpg", folder / "loop.jpg.2")
    os.mkfifo(folder / "fifo.jpg")
    png = folder / "alpha.png"
    picture(4).convert("RGBA").save(png)
    (folder / "truncated.png").write_bytes(png.read_bytes()[:-40])
    bad = {
        "truncated.jpg": "truncated (no end-of-image marker) and cannot be decoded",
        "no end marker.jpg": "truncated (no end-of-image marker) and cannot be decoded",
        "truncated.png": "truncated (no end-of-image marker) and cannot be decoded",
        "empty.jpg": "empty file (0 bytes)",
        "text.jpg": "not an image (the file starts with b'not an image')",
        "tiff.png": "TIFF image, which TensorFlow cannot decode",
        "one bit.bmp": "cannot be decoded",
        "bomb.png": "decompression bomb: the header claims 2,500,000,000 pixels",
        "just over the limit.png": "decompression bomb: the header claims 9500x9500 = 90,250,000 pixels",
        "loop.jpg": "cannot read: symbolic link loop",
        "fifo.jpg": "not a regular file",
    }
    picture(5).convert("CMYK").save(folder / "cmyk.jpg")
    picture(6).convert("L").save(folder / "grey.jpg")
    picture(7).convert("LA").save(folder / "grey alpha.png")
    Image.fromarray((np.arange(32 * 32, dtype=np.uint16) * 60).reshape(32, 32)).save(folder / "16 bit.png")
    picture(8).convert("P").save(folder / "palette.gif")
    picture(9).convert("P").save(folder / "palette.bmp")
    picture(10, size=1).save(folder / "one pixel.png")
    picture(11).save(folder / "naïve café ☕ №1.jpg")
    picture(12).save(folder / "webp named.jpg", format="WEBP")
    valid = ["ok.jpg", "alpha.png", "cmyk.jpg", "grey.jpg", "grey alpha.png", "16 bit.png", "palette.gif",
             "palette.bmp", "one pixel.png", "naïve café ☕ №1.jpg", "webp named.jpg"]
    return {str(folder / k): v for k, v in bad.items()}, [str(folder / name) for name in valid]


@pytest.mark.parametrize("full_decode_pixels", [sources.FULL_DECODE_PIXELS, 0], ids=["decode all", "headers only"])
def test_check_images_finds_every_bad_file_and_accepts_odd_valid_ones(corpus, full_decode_pixels):
    bad, valid = corpus
    found = check_images([*bad, *valid], full_decode_pixels=full_decode_pixels)
    reasons = {b.path: b.reason for b in found}
    assert set(reasons) == set(bad)
    for path, expected in bad.items():
        assert reasons[path].startswith(expected), (path, reasons[path])


def test_a_bomb_is_never_decoded_and_verdicts_are_cached(corpus, monkeypatch):
    bad, valid = corpus
    decoded: list[str] = []
    real = sources.undecodable
    monkeypatch.setattr(sources, "undecodable", lambda paths: decoded.extend(paths) or real(paths))
    check_images([*bad, *valid])
    assert not any(Path(p).name in ("bomb.png", "just over the limit.png") for p in decoded)
    assert set(valid) <= set(decoded)

    def no_decoding(paths):
        raise AssertionError(f"decoded again: {paths}")

    monkeypatch.setattr(sources, "undecodable", no_decoding)
    assert {b.path for b in check_images([*bad, *valid])} == set(bad)


def test_changed_file_is_checked_again(tmp_path):
    path = tmp_path / "a.jpg"
    picture(1).save(path)
    assert check_images([str(path)]) == []
    path.write_text("now it is text, and longer than before")
    assert [b.reason for b in check_images([str(path)])] == ["not an image (the file starts with b'now it is text, ')"]


def test_odd_valid_images_decode_to_rgb(corpus):
    _, valid = corpus
    examples = sources.Examples(labels=np.zeros(len(valid), dtype=np.int64), ids=np.asarray(valid))
    ds = pipeline.make_dataset(examples, 2, 32, 64, lambda x: x, training=False, seed=0)
    images, labels = next(iter(ds))
    assert images.shape == (len(valid), 32, 32, 3) and images.dtype == "float32"
    assert float(images.numpy().max()) > 0 and labels.shape == (len(valid), 2)


def write_folder(root: Path, per_class: int = 4, classes=("a", "b")) -> Path:
    seed = 0
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            seed += 1
            picture(seed).save(root / name / f"{i}.png")
    return root


def split_all(source):
    from triptych.data.splits import make_splits

    return make_splits(source, seed=0, val_fraction=0.25, test_fraction=0.25)


def test_screen_images_stops_or_skips_and_resplits(tmp_path):
    folder = write_folder(tmp_path / "data", per_class=6)
    (folder / "a" / "bad.png").write_text("text")
    (folder / "b" / "empty.jpg").write_bytes(b"")
    source = sources.load_folder(folder)
    seen = []
    with pytest.raises(BadImagesError) as err:
        screen_images(source, split_all, skip_bad=False, on_bad=seen.append)
    message = str(err.value)
    assert message.startswith("2 of the 14 image files this run uses cannot be used; first: ")
    assert f"triptych audit {folder}" in message and "--skip-bad" in message
    assert len(seen[-1]) == 2

    splits, bad = screen_images(source, split_all, skip_bad=True)
    used = [str(p) for name in ("train", "val", "test") for p in getattr(splits, name).ids]
    assert len(used) == 12 and not any(p.endswith(("bad.png", "empty.jpg")) for p in used)
    assert sorted(Path(b.path).name for b in bad) == ["bad.png", "empty.jpg"]


def test_screen_images_only_checks_the_files_a_subset_uses(tmp_path):
    from triptych.data.splits import make_splits

    folder = write_folder(tmp_path / "data", per_class=20)
    checked: list[str] = []

    def check(paths):
        checked.extend(paths)
        return []

    source = sources.load_folder(folder)
    screen_images(source, lambda s: make_splits(s, seed=0, val_fraction=0.25, test_fraction=0.25, train_per_class=4, test_per_class=2),
                  skip_bad=False, check=check)
    assert len(checked) == 12


def test_skipping_every_image_of_a_class_is_an_error(tmp_path):
    folder = write_folder(tmp_path / "data", per_class=4)
    for i in range(4):
        (folder / "b" / f"{i}.png").write_text("broken")
    with pytest.raises(TriptychError, match="no usable training image left in class b"):
        screen_images(sources.load_folder(folder), split_all, skip_bad=True)


def test_class_folder_that_links_back_is_refused(tmp_path):
    folder = write_folder(tmp_path / "data")
    os.symlink("..", folder / "loop")
    with pytest.raises(TriptychError, match="symbolic link loop"):
        list_image_folder(folder)


def test_small_datasets_are_cached_in_ram_large_ones_stream_from_disk(tmp_path):
    assert pipeline.should_cache(60_000, 32)  # all of CIFAR-10 at 32x32: 737 MB of float32
    assert not pipeline.should_cache(4_500, 224)  # the WikiArt sample at 224: 2.7 GB
    assert not pipeline.should_cache(10, 32, cache=False) and pipeline.should_cache(10**6, 224, cache=True)
    folder = write_folder(tmp_path / "data", per_class=2)
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    examples = sources.Examples(labels=np.array([0, 0, 1, 1]), ids=np.asarray(paths))

    def epochs(cache: bool) -> int:
        ds = pipeline.make_dataset(examples, 2, 32, 4, lambda x: x, training=False, seed=0, cache=cache)
        list(ds)  # first epoch reads the files
        Path(paths[0]).rename(paths[0] + ".moved")
        try:
            list(ds)  # second epoch: from RAM, or from disk again
            return 2
        except Exception:  # noqa: BLE001 - tf.errors.NotFoundError
            return 1
        finally:
            Path(paths[0] + ".moved").rename(paths[0])

    assert epochs(cache=True) == 2
    assert epochs(cache=False) == 1
