"""Tests for triptych.data.audit: every problem type on images made here with Pillow."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from triptych.data import audit
from triptych.data.audit import (
    DEFAULT_NEAR_THRESHOLD,
    audit_folder,
    cross_split_duplicates,
    format_report,
    hamming_pairs,
    inspect_file,
    read_split_csv,
)
from triptych.errors import InvalidArgumentError, MissingFileError

SRC = Path(__file__).resolve().parents[2]


def painting(seed: int, size: tuple[int, int] = (96, 96)) -> Image.Image:
    """A structured random RGB image (smooth colour field plus shapes), different per seed."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    field = Image.fromarray(low).resize(size, Image.Resampling.BICUBIC)
    pixels = np.asarray(field).astype(np.int16)
    for _ in range(4):
        x0, y0 = rng.integers(0, size[0] // 2), rng.integers(0, size[1] // 2)
        w, h = rng.integers(size[0] // 6, size[0] // 2), rng.integers(size[1] // 6, size[1] // 2)
        pixels[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, size=3)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (correct CRCs) with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    """Two classes of distinct images plus one of each problem."""
    root = tmp_path_factory.mktemp("messy")
    cats, dogs = root / "cats", root / "dogs"
    cats.mkdir()
    dogs.mkdir()
    for i in range(6):
        painting(i).save(cats / f"cat{i}.jpg", quality=90)
        painting(100 + i).save(dogs / f"dog{i}.png")
    # exact duplicate across classes (same bytes)
    (dogs / "copy of cat0.jpg").write_bytes((cats / "cat0.jpg").read_bytes())
    # near duplicate: brighter, re-encoded at lower quality
    ImageEnhance.Brightness(painting(1)).enhance(1.08).save(cats / "cat1 brighter.jpg", quality=60)
    # broken files
    (cats / "empty.jpg").write_bytes(b"")
    (cats / "notes.jpg").write_text("this is not an image\n")
    data = jpeg_bytes(painting(7, (200, 200)))
    (cats / "truncated.jpg").write_bytes(data[: len(data) // 2])
    # odd modes and sizes (seeds of their own: no accidental near duplicates)
    painting(8).convert("RGBA").save(dogs / "alpha.png")
    painting(9).convert("CMYK").save(dogs / "cmyk.jpg")
    painting(10).convert("L").save(dogs / "grey.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(dogs / "dot.png")
    (dogs / "huge.png").write_bytes(png_claiming(50_000, 50_000))
    # unicode and spaces in names
    painting(11).save(cats / "Ölgemälde – nuit étoilée 1.jpg")
    painting(12).save(dogs / "café au lait.jpg")
    # PNG data named .jpg; a non-image file that training would skip
    painting(13).save(cats / "really a png.jpg", format="PNG")
    (dogs / "readme.txt").write_text("hello")
    return root


@pytest.fixture(scope="module")
def report(messy):
    audit.clear_cache()
    return audit_folder(messy, workers=2, progress=False)


def test_class_counts_and_totals(report):
    assert report.class_counts == {"cats": 12, "dogs": 13}
    assert report.files == 25
    assert report.ignored_files == ["dogs/readme.txt"]


def test_unreadable_files_each_with_a_reason(report):
    reasons = {item["path"]: item["reason"] for item in report.unreadable}
    assert set(reasons) == {"cats/empty.jpg", "cats/notes.jpg", "cats/truncated.jpg"}
    assert "0 bytes" in reasons["cats/empty.jpg"]
    assert "not an image" in reasons["cats/notes.jpg"]
    assert "truncated" in reasons["cats/truncated.jpg"]


def test_decompression_bomb_reported_without_decoding(report):
    assert [b["path"] for b in report.decompression_bombs] == ["dogs/huge.png"]
    assert "2,500,000,000" in report.decompression_bombs[0]["reason"]
    assert "dogs/huge.png" not in {item["path"] for item in report.unreadable}


def test_bomb_just_over_the_limit_and_custom_limit(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_claiming(10_000, 10_000))  # 100 M pixels: Pillow only warns
    info = inspect_file(str(path))
    assert info.bomb is not None and info.error is None
    painting(0, (64, 64)).save(tmp_path / "small.png")
    info = inspect_file(str(tmp_path / "small.png"), max_pixels=1000)
    assert info.bomb is not None and info.width == 64 and "64x64" in info.bomb


def test_modes_sizes_and_formats(report):
    kinds = {item["path"]: item["kind"] for item in report.non_rgb}
    assert kinds == {"dogs/alpha.png": "alpha", "dogs/cmyk.jpg": "cmyk", "dogs/grey.png": "greyscale"}
    assert [t["path"] for t in report.tiny] == ["dogs/dot.png"]
    assert report.format_mismatch == [{"path": "cats/really a png.jpg", "format": "PNG", "extension": ".jpg"}]


def test_exact_and_near_duplicates(report):
    assert report.exact_duplicates == [
        {"files": ["cats/cat0.jpg", "dogs/copy of cat0.jpg"], "classes": ["cats", "dogs"]}
    ]
    assert len(report.near_duplicates) == 1, report.near_duplicates
    group = report.near_duplicates[0]
    assert group["files"] == ["cats/cat1 brighter.jpg", "cats/cat1.jpg"]
    assert group["classes"] == ["cats"]
    assert 0 < group["max_distance"] <= DEFAULT_NEAR_THRESHOLD // 2
    assert report.cross_split is None


def test_distinct_structured_images_are_far_apart():
    infos = [audit.FileInfo("x", 1, phash=audit._phash(np.asarray(painting(s).convert("L")), (0, 0, 0, 0)))
             for s in range(40)]
    distances = [d for _, _, d in hamming_pairs([i.phash for i in infos], audit.HASH_BITS)]
    assert min(distances) > DEFAULT_NEAR_THRESHOLD


def test_unicode_names_are_audited(report):
    assert not any("Ölgemälde" in item["path"] or "café" in item["path"] for item in report.unreadable)
    text = format_report(report)
    assert "cats/truncated.jpg" in text and "dogs/huge.png" in text


def test_json_round_trip_and_summary(report):
    data = json.loads(json.dumps(report.to_dict()))
    assert data["summary"]["unreadable"] == 3
    assert data["summary"]["exact_duplicate_groups"] == 1
    assert data["summary"]["near_duplicate_groups"] == 1
    assert data["borders"]["checked"] == 21


def test_black_padding_detected_and_ignored_by_the_hash(tmp_path):
    picture = painting(21, (120, 80))
    padded = Image.new("RGB", (120, 120))
    padded.paste(picture, (0, 20))
    padded.save(tmp_path / "padded.jpg", quality=92)
    picture.save(tmp_path / "plain.jpg", quality=92)
    a, b = inspect_file(str(tmp_path / "padded.jpg")), inspect_file(str(tmp_path / "plain.jpg"))
    assert audit.has_border(a.padding) and not audit.has_border(b.padding)
    top, bottom, left, right = a.padding
    assert abs(top - 20) <= 1 and abs(bottom - 20) <= 1 and left == right == 0
    assert hamming_pairs([a.phash, b.phash], DEFAULT_NEAR_THRESHOLD // 2)


def test_hamming_pairs_matches_brute_force():
    rng = np.random.default_rng(0)
    hashes = [rng.integers(0, 256, 32, dtype=np.uint8).tobytes() for _ in range(300)]
    hashes[7] = hashes[3]
    flipped = bytearray(hashes[10])
    flipped[0] ^= 0b111
    hashes[250] = bytes(flipped)
    threshold = 110
    bits = np.unpackbits(np.frombuffer(b"".join(hashes), np.uint8).reshape(300, 32), axis=1)
    expected = {(i, j, int((bits[i] != bits[j]).sum())) for i in range(300) for j in range(i + 1, 300)
                if (bits[i] != bits[j]).sum() <= threshold}
    got = hamming_pairs(hashes, threshold, block_bytes=10_000)  # many small blocks
    assert set(got) == expected and len(got) == len(expected)
    assert (3, 7, 0) in expected and (10, 250, 3) in expected


def test_cross_split_duplicates(messy, monkeypatch):
    files = sorted(str(p) for p in (messy / "cats").glob("cat?.jpg"))
    dog = str(messy / "dogs" / "copy of cat0.jpg")
    near = str(messy / "cats" / "cat1 brighter.jpg")
    splits = {
        "train": files[:3] + [str(messy / "cats" / "empty.jpg")],
        "val": [near],
        "test": files[3:] + [dog, files[2]],  # files[2] is also in train
    }
    found = cross_split_duplicates(splits)
    cat0, cat1, cat2 = files[:3]
    assert [(a, b) for a, b, _ in found] == [(cat0, dog), (cat2, cat2), (cat1, near)]
    assert [d for *_, d in found][:2] == [0, 0] and 0 < found[2][2] <= DEFAULT_NEAR_THRESHOLD
    # Second call: every hash comes from the cache, nothing is decoded again.
    monkeypatch.setattr(audit, "inspect_file", lambda *a, **k: pytest.fail("not cached"))
    assert cross_split_duplicates(splits) == found
    assert cross_split_duplicates({"train": files[:1], "test": files[1:]}) == []


def test_dropping_against_the_train_pool_keeps_one_test_set_for_every_train_subset(messy):
    from triptych.data.leakage import guard_cross_split_duplicates
    from triptych.data.sources import Examples
    from triptych.data.splits import Splits

    cats = sorted(str(p) for p in (messy / "cats").glob("cat?.jpg"))
    dog = str(messy / "dogs" / "copy of cat0.jpg")

    def splits(train: list[str]) -> Splits:
        def examples(ids):
            return Examples(labels=np.zeros(len(ids), int), ids=np.array(ids, dtype=object))
        return Splits(class_names=("cats", "dogs"), train=examples(train), val=examples([cats[4]]),
                      test=examples([dog, cats[3]]))

    pool = cats[:3] + [cats[4]]  # everything but the test split; val is drawn from it too
    with_cat0, without_cat0 = splits(cats[:3]), splits(cats[1:3])
    # Judged by its own train split, a subset without cat0 keeps cat0's copy in test ...
    assert list(guard_cross_split_duplicates(without_cat0, "drop", "messy")[0].test.ids) == [dog, cats[3]]
    # ... judged by the pool, every subset drops it: the test set no longer depends on the subset.
    for chosen in (with_cat0, without_cat0):
        kept, dropped = guard_cross_split_duplicates(chosen, "drop", "messy", train_pool=pool)
        assert list(kept.test.ids) == [cats[3]] and list(kept.val.ids) == [cats[4]] and dropped == 1


def test_hash_cache_file_serves_a_new_process(messy, tmp_path, monkeypatch):
    files = sorted(str(p) for p in (messy / "cats").glob("*.jpg"))
    splits = {"train": files[::2], "test": files[1::2]}
    cache = tmp_path / "hashes.json"
    audit.clear_cache()
    first = cross_split_duplicates(splits, cache_file=cache)
    assert cache.is_file()
    audit.clear_cache()  # as if in a new process
    monkeypatch.setattr(audit, "inspect_file", lambda *a, **k: pytest.fail("not cached"))
    assert cross_split_duplicates(splits, cache_file=cache) == first
    assert audit_folder(messy / "cats", cache_file=cache, progress=False).unreadable
    cache.write_text("{damaged")
    audit.clear_cache()
    monkeypatch.undo()
    assert cross_split_duplicates(splits, cache_file=cache) == first  # a damaged cache is rebuilt


def test_the_split_guard_remembers_the_hashes_for_the_next_process(messy, tmp_path, monkeypatch):
    from triptych.data.leakage import HASH_CACHE_FILE, guard_cross_split_duplicates
    from triptych.data.sources import Examples
    from triptych.data.splits import Splits

    cats = sorted(str(p) for p in (messy / "cats").glob("cat?.jpg"))

    def examples(ids):
        return Examples(labels=np.zeros(len(ids), int), ids=np.array(ids, dtype=object))

    splits = Splits(class_names=("cats",), train=examples(cats[:3]), val=examples(cats[3:4]), test=examples(cats[4:]))
    monkeypatch.setenv("TRIPTYCH_CACHE", str(tmp_path))
    audit.clear_cache()
    first = guard_cross_split_duplicates(splits, "drop", "messy")
    assert (tmp_path / HASH_CACHE_FILE).is_file()
    audit.clear_cache()  # as if in the next experiment's process
    monkeypatch.setattr(audit, "inspect_file", lambda *a, **k: pytest.fail("not cached"))
    again = guard_cross_split_duplicates(splits, "drop", "messy")
    assert list(again[0].test.ids) == list(first[0].test.ids) and again[1] == first[1]


def test_audit_with_splits_and_train_test_layout(messy, tmp_path):
    files = sorted(str(p) for p in (messy / "cats").glob("*.jpg"))
    split = {"train": [f for f in files if "brighter" not in f], "test": [str(messy / "cats" / "cat1 brighter.jpg")]}
    result = audit_folder(messy, splits=split, progress=False)
    assert [(c["file_a"], c["file_b"], c["exact"]) for c in result.cross_split] == [
        ("cats/cat1.jpg", "cats/cat1 brighter.jpg", False)]

    csv_path = tmp_path / "split.csv"
    csv_path.write_text("split,id,label\n" + "".join(f"{s},{p},cats\n" for s, ps in split.items() for p in ps))
    assert read_split_csv(csv_path) == split

    layout = tmp_path / "layout"
    for part, seeds in (("train", (30, 31)), ("test", (32, 30))):
        for cls in ("a", "b"):
            (layout / part / cls).mkdir(parents=True)
            for s in seeds:
                painting(s + (cls == "b") * 50).save(layout / part / cls / f"{s}.png")
    result = audit_folder(layout, progress=False)
    assert result.split_counts == {"test": {"a": 2, "b": 2}, "train": {"a": 2, "b": 2}}
    assert result.class_counts == {"a": 4, "b": 4}
    assert sorted((c["file_a"], c["file_b"]) for c in result.cross_split) == [
        ("train/a/30.png", "test/a/30.png"), ("train/b/30.png", "test/b/30.png")]


def test_missing_or_non_folder_is_a_user_error(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        audit_folder(tmp_path / "nope")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(InvalidArgumentError, match="not a folder"):
        audit_folder(tmp_path / "file.jpg")


@pytest.mark.parametrize(("setting", "message"), [
    ({"workers": 0}, r"workers must be >= 1 \(or None: up to 4 threads\), got 0"),
    ({"near_threshold": -1}, r"near_threshold must be >= 0 .*, got -1"),
    ({"min_side": 0}, r"min_side and max_pixels must be >= 1, got 0 and "),
])
def test_bad_settings_are_refused_by_the_api(messy, setting, message):
    with pytest.raises(InvalidArgumentError, match=message):
        audit_folder(messy, progress=False, **setting)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "triptych", "audit", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_json_and_human_output(messy, tmp_path):
    out = tmp_path / "report" / "audit.json"
    done = _cli(str(messy), "--json", "--out", str(out))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["summary"]["unreadable"] == 3 and data["class_counts"] == {"cats": 12, "dogs": 13}
    assert json.loads(out.read_text(encoding="utf-8")) == data

    missing = _cli(str(tmp_path / "missing"))
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "does not exist" in missing.stderr and not missing.stdout


def test_human_summary_is_short_and_lists_examples(report):
    text = format_report(report, examples=2)
    assert "cats" in text and "12" in text
    assert "unreadable or truncated: 3" in text and "... and 1 more" in text
    assert "exact duplicates (same bytes): 1 group(s)" in text and "1 group(s) span classes" in text
    assert "near duplicates" in text
    assert len(text.splitlines()) < 40
