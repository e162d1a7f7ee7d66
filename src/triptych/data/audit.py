"""Audit an image folder before training on it: what is there, what will break, what leaks.

``audit_folder`` opens every image with Pillow and decodes it fully, so it finds the files that
would crash (or silently poison) a training run: empty, truncated or non-image files, CMYK /
greyscale / alpha images, tiny images, decompression bombs (reported from the header alone,
never decoded), exact duplicates (sha1 of the bytes) and near duplicates (64-bit perceptual
hash, Hamming distance), within the folder and across train/val/test splits. It also measures
how many images carry black padding borders.

``cross_split_duplicates`` is the piece a training run calls before it starts: given the files
of each split, it returns the pairs of files in different splits that are the same picture.
Hashes are cached per (path, size, mtime), so calling it again on the same files is instant.

Files are listed and their headers checked by ``triptych.data.images`` (the checks training
and inference use). Pillow, numpy and imagehash only; no TensorFlow.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image

from triptych.data.images import (
    MAX_IMAGE_PIXELS,
    DecompressionBombError,
    ImageError,
    ImageHeader,
    header_of,
    is_image_name,
    open_image,
    stat_image_file,
    walk_files,
)
from triptych.errors import InvalidArgumentError, MissingFileError, TriptychError
from triptych.io import atomic_write_json
from triptych.progress import progress_bar

# Perceptual hash: imagehash.phash with hash_size=16, i.e. the signs of the 16x16 lowest DCT
# frequencies of a 64x64 greyscale thumbnail: 256 bits. On the WikiArt sample, different
# photographs of the same painting (other colours, crops, exposure) lie 28-56 bits apart and the
# closest two different paintings 74; a JPEG re-encode plus brightness change moves a hash by
# at most ~15 bits, a resize by ~22. 64 bits (a quarter) sits between. The common 64-bit phash
# (hash_size=8) cannot separate them: same-painting pairs at 6-10 bits, different ones from 8.
HASH_SIZE = 16
HASH_BITS = HASH_SIZE * HASH_SIZE
DEFAULT_NEAR_THRESHOLD = 64
DEFAULT_MIN_SIDE = 32
# A border row/column is "black" when its mean grey level is at most this (JPEG noise keeps
# padding a little above 0) ...
BORDER_MEAN = 10.0
# ... and an image "has a border" when at least this many black rows (top + bottom) or
# columns (left + right) frame it, at least one on each of the two opposite sides.
BORDER_MIN_TOTAL = 4
EXAMPLES_SHOWN = 5
_READ_WHOLE = 64 * 2**20  # files up to this size are read into memory once (sha1 + decode)

_EXTENSION_FORMATS = {
    ".jpg": {"JPEG", "MPO"},
    ".jpeg": {"JPEG", "MPO"},
    ".png": {"PNG"},
    ".bmp": {"BMP", "DIB"},
    ".gif": {"GIF"},
}
_GREY_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


# --------------------------------------------------------------------------------------------
# One file


@dataclass(frozen=True)
class FileInfo:
    """What one file is, as far as training cares."""

    path: str
    size: int
    sha1: str | None = None
    format: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    has_alpha: bool = False
    error: str | None = None  # could not be opened or fully decoded
    bomb: str | None = None  # header claims too many pixels; not decoded
    phash: bytes | None = None  # 256-bit perceptual hash of the picture inside its black padding
    padding: tuple[int, int, int, int] | None = None  # black padding rows/cols: top, bottom, left, right


def inspect_file(path: str, *, max_pixels: int = MAX_IMAGE_PIXELS) -> FileInfo:
    """Open ``path`` with Pillow, decode it fully, hash it; never raises for a bad file."""
    try:
        size = stat_image_file(path).st_size
        sha1, data = _sha1(path, size)
    except ImageError as err:
        return FileInfo(path, 0, error=str(err))
    except OSError as err:
        return FileInfo(path, 0, error=f"cannot read: {err.strerror or err}")
    found = FileInfo(path, size, sha1)
    try:
        with open_image(io.BytesIO(data) if data is not None else path, max_pixels) as image:
            return _decode(image, replace(found, **_header_fields(header_of(image))))
    except DecompressionBombError as err:
        return replace(found, **_header_fields(err.header), bomb=str(err))
    except ImageError as err:
        return replace(found, error=str(err))


def _header_fields(header: ImageHeader | None) -> dict[str, Any]:
    if header is None:
        return {}
    return {"format": header.format, "mode": header.mode, "width": header.width, "height": header.height,
            "has_alpha": header.has_alpha}


def _decode(image: Image.Image, found: FileInfo) -> FileInfo:
    """``found`` completed by decoding ``image``: its padding and perceptual hash, or an error."""
    try:
        image.load()
    except Exception as err:  # noqa: BLE001 - truncated or corrupt data
        return replace(found, error=_reason(err))
    try:
        grey = np.asarray(image.convert("L"))
        padding = _black_padding(grey)
        return replace(found, padding=padding, phash=_phash(grey, padding))
    except Exception as err:  # noqa: BLE001 - exotic modes that cannot become greyscale
        return replace(found, error=f"decoded but cannot be converted: {_reason(err)}")


def _sha1(path: str, size: int) -> tuple[str, bytes | None]:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        if size <= _READ_WHOLE:
            data = handle.read()
            digest.update(data)
            return digest.hexdigest(), data
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest(), None


def _reason(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _black_padding(grey: np.ndarray) -> tuple[int, int, int, int]:
    """Black padding rows (top, bottom) and columns (left, right) around the picture.

    Padding from "resize keeping the aspect ratio, then pad" is symmetric, so a black band on one
    side only (a dark sky, a night scene) is not padding: each pair of opposite sides counts only
    when both are black and about as wide.
    """
    rows = grey.mean(axis=1) <= BORDER_MEAN
    cols = grey.mean(axis=0) <= BORDER_MEAN
    return (*_symmetric(_run(rows), _run(rows[::-1])), *_symmetric(_run(cols), _run(cols[::-1])))


def _symmetric(a: int, b: int) -> tuple[int, int]:
    if min(a, b) >= 1 and abs(a - b) <= max(2, 0.1 * max(a, b)):
        return a, b
    return 0, 0


def _run(flags: np.ndarray) -> int:
    misses = np.flatnonzero(~flags)
    return int(misses[0]) if misses.size else int(flags.size)


def has_border(padding: tuple[int, int, int, int] | None) -> bool:
    if padding is None:
        return False
    top, bottom, left, right = padding
    return top + bottom >= BORDER_MIN_TOTAL or left + right >= BORDER_MIN_TOTAL


def _phash(grey: np.ndarray, padding: tuple[int, int, int, int]) -> bytes:
    """imagehash.phash (HASH_SIZE x HASH_SIZE DCT sign bits) of the picture inside its padding.

    Cropping the padding first means the same painting padded differently still matches, and
    two different paintings padded the same way do not match on their borders alone.
    """
    top, bottom, left, right = padding
    height, width = grey.shape
    if height - top - bottom >= 16 and width - left - right >= 16:
        grey = grey[top : height - bottom, left : width - right]
    bits = imagehash.phash(Image.fromarray(np.ascontiguousarray(grey)), hash_size=HASH_SIZE).hash.reshape(-1)
    return np.packbits(bits).tobytes()


# --------------------------------------------------------------------------------------------
# Many files: parallel inspection with a cache


_CACHE: dict[tuple[str, int, int, int], FileInfo] = {}


def _cache_key(path: str, max_pixels: int) -> tuple[str, int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return os.path.abspath(path), stat.st_size, stat.st_mtime_ns, max_pixels


def inspect_files(
    paths: Sequence[str],
    *,
    workers: int | None = None,
    progress: bool | None = None,
    description: str = "auditing images",
    max_pixels: int = MAX_IMAGE_PIXELS,
    cache_file: str | os.PathLike | None = None,
) -> list[FileInfo]:
    """``inspect_file`` for every path, in order, on ``workers`` threads, reusing cached results.

    Results are cached in this process by (absolute path, size, mtime); with ``cache_file`` also
    on disk (JSON, written atomically), so the next process skips the decoding too.

    Threads, not processes: Pillow's decoder, resize and hashlib release the GIL, and a thread
    pool is safe to start from a process that has already loaded TensorFlow (fork is not).
    """
    _check_workers(workers)
    if cache_file is not None:
        _load_cache_file(Path(cache_file))
    results: list[FileInfo | None] = [None] * len(paths)
    todo: list[int] = []
    keys: list[tuple[str, int, int, int] | None] = []
    for i, path in enumerate(paths):
        key = _cache_key(path, max_pixels)
        keys.append(key)
        cached = _CACHE.get(key) if key is not None else None
        if cached is not None:
            results[i] = FileInfo(**{**_fields(cached), "path": path})
        else:
            todo.append(i)
    if todo:
        found = _inspect_uncached([paths[i] for i in todo], workers, progress, description, max_pixels)
        for i, info in zip(todo, found):
            results[i] = info
            if keys[i] is not None:
                _CACHE[keys[i]] = info
        if cache_file is not None:
            _save_cache_file(Path(cache_file))
    return results  # type: ignore[return-value]


def _inspect_uncached(
    paths: list[str], workers: int | None, progress: bool | None, description: str, max_pixels: int
) -> list[FileInfo]:
    found = []
    with progress_bar(len(paths), description, enabled=progress) as advance:
        with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
            for info in pool.map(lambda path: inspect_file(path, max_pixels=max_pixels), paths):
                found.append(info)
                advance()
    return found


def _check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise InvalidArgumentError(f"workers must be >= 1 (or None: up to 4 threads), got {workers}")


def clear_cache() -> None:
    """Forget the hashes cached in this process (not a cache file)."""
    _CACHE.clear()


_CACHE_VERSION = f"triptych-audit-1/phash{HASH_SIZE}"


def _load_cache_file(path: Path) -> None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no cache yet, or a damaged one: start again
    if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION:
        return
    for entry in data.get("files", []):
        try:
            key = (entry["abspath"], entry["size"], entry["mtime_ns"], entry["max_pixels"])
            info = {name: entry.get(name) for name in FileInfo.__dataclass_fields__}
            info["path"] = entry["abspath"]
            info["phash"] = bytes.fromhex(entry["phash"]) if entry.get("phash") else None
            info["padding"] = tuple(entry["padding"]) if entry.get("padding") else None
            info["has_alpha"] = bool(entry.get("has_alpha"))
            _CACHE.setdefault(key, FileInfo(**info))
        except (KeyError, TypeError, ValueError):
            continue


def _save_cache_file(path: Path) -> None:
    entries = []
    for (abspath, size, mtime_ns, max_pixels), info in _CACHE.items():
        entry = _fields(info)
        entry.update(abspath=abspath, size=size, mtime_ns=mtime_ns, max_pixels=max_pixels,
                     phash=info.phash.hex() if info.phash else None)
        del entry["path"]
        entries.append(entry)
    atomic_write_json(path, {"version": _CACHE_VERSION, "files": entries})


def _fields(info: FileInfo) -> dict[str, Any]:
    return {name: getattr(info, name) for name in FileInfo.__dataclass_fields__}


# --------------------------------------------------------------------------------------------
# Duplicates


def hamming_pairs(
    hashes: Sequence[bytes], threshold: int, *, block_bytes: int = 32 * 2**20
) -> list[tuple[int, int, int]]:
    """Index pairs ``(i, j, distance)`` with i < j and Hamming distance <= ``threshold``.

    ``hashes`` are equal-length byte strings (a multiple of 8 bytes). Vectorised: XOR a block of
    rows against all hashes as uint64 words and count bits with numpy, so 4,500 hashes (10 M
    pairs) take well under a second; memory stays near ``block_bytes`` per block.
    """
    n = len(hashes)
    pairs: list[tuple[int, int, int]] = []
    if n < 2:
        return pairs
    codes = np.frombuffer(b"".join(hashes), dtype=np.uint64).reshape(n, -1)
    words = codes.shape[1]
    rows = max(1, block_bytes // (8 * n * words))
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        later = codes[start:]  # rows start..stop-1 against themselves and every later hash
        distance = np.zeros((stop - start, n - start), dtype=np.int32)
        for w in range(words):
            distance += np.bitwise_count(codes[start:stop, w, None] ^ later[None, :, w])
        distance[np.tri(stop - start, n - start, dtype=bool)] = threshold + 1  # keep j > i only
        ii, jj = np.nonzero(distance <= threshold)
        pairs.extend(zip((ii + start).tolist(), (jj + start).tolist(), distance[ii, jj].tolist()))
    return pairs


def _groups(n: int, edges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected components (size >= 2) of an undirected graph, by union-find."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        members[find(i)].append(i)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])


def _duplicate_pairs(
    infos: Sequence[FileInfo], near_threshold: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int, int]]]:
    """Exact pairs (same sha1, non-empty) and near pairs (phash distance, different bytes)."""
    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, info in enumerate(infos):
        if info.sha1 is not None and info.size > 0:
            by_sha[info.sha1].append(i)
    exact = [(group[0], other) for group in by_sha.values() for other in group[1:]]
    hashed = [i for i, info in enumerate(infos) if info.phash is not None]
    near = []
    for a, b, d in hamming_pairs([infos[i].phash for i in hashed], near_threshold):  # type: ignore[misc]
        i, j = hashed[a], hashed[b]
        if infos[i].sha1 != infos[j].sha1:
            near.append((i, j, d))
    return exact, near


def cross_split_duplicates(
    split_paths: dict[str, list[str]],
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    *,
    workers: int | None = None,
    progress: bool | None = None,
    cache_file: str | os.PathLike | None = None,
) -> list[tuple[str, str, int]]:
    """Pairs of files in different splits that are the same picture: ``(path_a, path_b, distance)``.

    ``path_a`` belongs to the split listed first in ``split_paths``. Distance 0 with equal bytes
    is an exact duplicate (the same file listed in two splits gives ``(p, p, 0)``); otherwise it
    is the perceptual-hash Hamming distance (<= ``near_threshold``). Unreadable files are only
    compared by their bytes. Sorted by distance, then paths. Hashes are cached in this process
    and, with ``cache_file``, on disk for the next one (4,500 files: ~10 s cold, ~1 s cached).
    """
    _check_threshold(near_threshold)
    flat, split_of = _flatten(split_paths)
    infos = inspect_files(flat, workers=workers, progress=progress, description="hashing split files",
                          cache_file=cache_file)
    return [(flat[i], flat[j], d) for i, j, d in _cross_pairs(infos, split_of, near_threshold)]


def _flatten(split_paths: dict[str, list[str]]) -> tuple[list[str], list[int]]:
    """Every file of every split, in order, and the index of its split."""
    flat: list[str] = []
    split_of: list[int] = []
    for k, paths in enumerate(split_paths.values()):
        flat.extend(str(p) for p in paths)
        split_of.extend([k] * len(paths))
    return flat, split_of


def _check_threshold(near_threshold: int) -> None:
    if near_threshold < 0:
        raise InvalidArgumentError(
            f"near_threshold must be >= 0 (a Hamming distance in {HASH_BITS} hash bits; 0: identical hashes only), "
            f"got {near_threshold}"
        )


def _cross_pairs(infos: Sequence[FileInfo], split_of: Sequence[int], near_threshold: int) -> list[tuple[int, int, int]]:
    exact, near = _duplicate_pairs(infos, near_threshold)
    # every member of an exact-duplicate group against every other, not just against the first
    by_sha: dict[str, list[int]] = defaultdict(list)
    for a, b in exact:
        by_sha[infos[a].sha1].extend([a, b])  # type: ignore[index]
    edges = {(i, j, 0) for members in by_sha.values() for i in set(members) for j in set(members) if i < j}
    edges.update(near)
    found = []
    for i, j, d in edges:
        if split_of[i] == split_of[j]:
            continue
        if split_of[i] > split_of[j]:
            i, j = j, i
        found.append((i, j, d))
    return sorted(found, key=lambda t: (t[2], str(infos[t[0]].path), str(infos[t[1]].path)))


# --------------------------------------------------------------------------------------------
# The folder report


@dataclass
class AuditReport:
    """Everything ``audit_folder`` found; ``to_dict()`` is what ``--json`` prints."""

    root: str
    files: int
    class_counts: dict[str, int]
    split_counts: dict[str, dict[str, int]] | None
    formats: dict[str, int]
    modes: dict[str, int]
    unreadable: list[dict[str, Any]] = field(default_factory=list)
    decompression_bombs: list[dict[str, Any]] = field(default_factory=list)
    non_rgb: list[dict[str, Any]] = field(default_factory=list)
    tiny: list[dict[str, Any]] = field(default_factory=list)
    format_mismatch: list[dict[str, Any]] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)
    outside_class_folders: list[str] = field(default_factory=list)
    exact_duplicates: list[dict[str, Any]] = field(default_factory=list)
    near_duplicates: list[dict[str, Any]] = field(default_factory=list)
    cross_split: list[dict[str, Any]] | None = None
    borders: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = self.summary_counts()
        return data

    def summary_counts(self) -> dict[str, int | None]:
        return {
            "files": self.files,
            "unreadable": len(self.unreadable),
            "decompression_bombs": len(self.decompression_bombs),
            "non_rgb": len(self.non_rgb),
            "tiny": len(self.tiny),
            "format_mismatch": len(self.format_mismatch),
            "ignored_files": len(self.ignored_files),
            "exact_duplicate_groups": len(self.exact_duplicates),
            "exact_duplicate_extra_files": sum(len(g["files"]) - 1 for g in self.exact_duplicates),
            "exact_duplicate_groups_across_classes": sum(1 for g in self.exact_duplicates if len(g["classes"]) > 1),
            "near_duplicate_groups": len(self.near_duplicates),
            "near_duplicate_extra_files": sum(len(g["files"]) - 1 for g in self.near_duplicates),
            "near_duplicate_groups_across_classes": sum(1 for g in self.near_duplicates if len(g["classes"]) > 1),
            "cross_split_pairs": None if self.cross_split is None else len(self.cross_split),
            "with_black_border": self.borders.get("with_border", 0),
        }

    @property
    def problems(self) -> int:
        """How many findings would matter for training (not counting borders)."""
        counts = self.summary_counts()
        keys = ("unreadable", "decompression_bombs", "non_rgb", "tiny", "format_mismatch", "exact_duplicate_groups",
                "near_duplicate_groups", "cross_split_pairs")
        return sum(counts[k] or 0 for k in keys)

    def to_text(self, examples: int = EXAMPLES_SHOWN) -> str:
        return format_report(self, examples)


def audit_folder(
    root: str | os.PathLike,
    *,
    splits: dict[str, list[str]] | None = None,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int = MAX_IMAGE_PIXELS,
    workers: int | None = None,
    progress: bool | None = None,
    cache_file: str | os.PathLike | None = None,
) -> AuditReport:
    """Audit the class-per-subfolder image folder ``root`` (or ``root/train`` + ``root/test``).

    ``splits`` maps a split name to its file paths (e.g. from a run's split.csv); duplicates
    between different splits are then listed in ``cross_split``. Without it, a folder with
    ``train/`` and ``test/`` subfolders is checked across those two. ``workers`` threads
    decode (default: up to 4); ``progress`` shows a bar (default: when stderr is a terminal).
    """
    start = time.perf_counter()
    _check_threshold(near_threshold)
    _check_workers(workers)
    if min_side < 1 or max_pixels < 1:
        raise InvalidArgumentError(f"min_side and max_pixels must be >= 1, got {min_side} and {max_pixels}")
    base = _existing_folder(root)
    listing = _list_folder(base)
    paths = [entry[0] for entry in listing.images]
    infos = inspect_files(paths, workers=workers, progress=progress, max_pixels=max_pixels, cache_file=cache_file)
    rel = {p: _relative(p, base) for p in paths}
    report = _new_report(base, listing, infos, near_threshold=near_threshold, min_side=min_side,
                         max_pixels=max_pixels)
    for info in infos:
        _classify(info, rel[info.path], min_side, report)
    _add_duplicates(report, listing, infos, rel, near_threshold)
    if splits is None and listing.has_splits:
        splits = listing.split_paths()
    if splits is not None:
        extra = _inspect_split_files(splits, paths, infos, workers=workers, progress=progress, cache_file=cache_file)
        report.cross_split = _cross_split_entries(splits, extra, rel, near_threshold)
    report.borders = _borders(infos, rel)
    report.seconds = round(time.perf_counter() - start, 2)
    return report


def _existing_folder(root: str | os.PathLike) -> Path:
    base = Path(root).expanduser()
    if not base.exists():
        raise MissingFileError(f"{base} does not exist (expected a folder with one subfolder of images per class)")
    if not base.is_dir():
        raise InvalidArgumentError(f"{base} is not a folder (expected a folder with one subfolder of images per class)")
    return base


def _new_report(
    base: Path, listing: _Listing, infos: list[FileInfo], *, near_threshold: int, min_side: int, max_pixels: int
) -> AuditReport:
    """The report's counts and settings, before any finding."""
    report = AuditReport(
        root=str(base.resolve()),
        files=len(infos),
        class_counts=dict(sorted(Counter(entry[1] for entry in listing.images if entry[1]).items())),
        split_counts=None,
        formats=dict(Counter(i.format or "unknown" for i in infos).most_common()),
        modes=dict(Counter(i.mode or "unknown" for i in infos).most_common()),
        ignored_files=[_relative(p, base) for p in listing.ignored],
        outside_class_folders=[_relative(p, base) for p, cls, _ in listing.images if not cls],
        settings={"near_threshold": near_threshold, "min_side": min_side, "max_pixels": max_pixels,
                  "hash": f"imagehash.phash hash_size={HASH_SIZE} ({HASH_BITS} bits) of the picture inside "
                  "its black padding; near_threshold is a Hamming distance in those bits",
                  "border_mean_max": BORDER_MEAN},
    )
    if listing.has_splits:
        counts: dict[str, Counter] = defaultdict(Counter)
        for _, cls, split in listing.images:
            counts[split][cls] += 1
        report.split_counts = {s: dict(sorted(c.items())) for s, c in sorted(counts.items())}
    return report


def _add_duplicates(
    report: AuditReport, listing: _Listing, infos: list[FileInfo], rel: dict[str, str], near_threshold: int
) -> None:
    """Groups of files that are the same picture: same bytes, or perceptual hashes close by."""
    paths = [info.path for info in infos]
    class_of = {p: cls for p, cls, _ in listing.images}
    exact, near = _duplicate_pairs(infos, near_threshold)
    report.exact_duplicates = [
        {"files": sorted(rel[paths[i]] for i in group), "classes": sorted({class_of[paths[i]] for i in group})}
        for group in _groups(len(infos), exact)
    ]
    for group in _groups(len(infos), [(i, j) for i, j, _ in near]):
        members = set(group)
        distances = [d for i, j, d in near if i in members]
        report.near_duplicates.append({
            "files": sorted(rel[paths[i]] for i in group),
            "classes": sorted({class_of[paths[i]] for i in group}),
            "max_distance": max(distances),
            "pairs": [[rel[paths[i]], rel[paths[j]], d] for i, j, d in near if i in members],
        })


def _borders(infos: list[FileInfo], rel: dict[str, str]) -> dict[str, Any]:
    decoded = [i for i in infos if i.padding is not None]
    bordered = [i for i in decoded if has_border(i.padding)]
    return {
        "checked": len(decoded),
        "with_border": len(bordered),
        "fraction": round(len(bordered) / len(decoded), 4) if decoded else 0.0,
        "mean_border_area": round(float(np.mean([_border_area(i) for i in bordered])), 4) if bordered else 0.0,
        "examples": [rel[i.path] for i in bordered[:EXAMPLES_SHOWN]],
    }


def _classify(info: FileInfo, rel: str, min_side: int, report: AuditReport) -> None:
    if info.error is not None:
        report.unreadable.append({"path": rel, "reason": info.error, "bytes": info.size})
    if info.bomb is not None:
        report.decompression_bombs.append({"path": rel, "width": info.width, "height": info.height,
                                           "reason": info.bomb})
    if info.mode is not None and (info.mode != "RGB" or info.has_alpha):
        report.non_rgb.append({"path": rel, "mode": info.mode, "kind": _mode_kind(info)})
    if info.width is not None and info.height is not None and min(info.width, info.height) < min_side:
        report.tiny.append({"path": rel, "width": info.width, "height": info.height})
    if info.format is not None:
        expected = _EXTENSION_FORMATS.get(Path(info.path).suffix.lower())
        if expected is not None and info.format not in expected:
            report.format_mismatch.append({"path": rel, "format": info.format,
                                           "extension": Path(info.path).suffix})


def _mode_kind(info: FileInfo) -> str:
    mode = info.mode or ""
    if info.has_alpha:
        return "alpha"
    if mode == "CMYK":
        return "cmyk"
    if mode in _GREY_MODES:
        return "greyscale"
    if mode == "P":
        return "palette"
    return "other"


def _border_area(info: FileInfo) -> float:
    top, bottom, left, right = info.padding  # type: ignore[misc]
    w, h = info.width or 1, info.height or 1
    inner = max(0, w - left - right) * max(0, h - top - bottom)
    return 1.0 - inner / (w * h)


def _inspect_split_files(
    splits: dict[str, list[str]],
    paths: list[str],
    infos: list[FileInfo],
    *,
    workers: int | None,
    progress: bool | None,
    cache_file: str | os.PathLike | None,
) -> list[FileInfo]:
    """The findings for every file of ``splits``, in order: those of the folder's files (matched
    by real path), the others inspected now."""
    by_real = {os.path.realpath(p): info for p, info in zip(paths, infos)}
    flat, _ = _flatten(splits)
    missing = [p for p in flat if os.path.realpath(p) not in by_real]
    extra = dict(zip(missing, inspect_files(missing, workers=workers, progress=progress,
                                            description="hashing split files", cache_file=cache_file)))
    return [by_real.get(os.path.realpath(p)) or extra[p] for p in flat]


def _cross_split_entries(
    splits: dict[str, list[str]], split_infos: list[FileInfo], rel: dict[str, str], near_threshold: int
) -> list[dict[str, Any]]:
    names = list(splits)
    flat, split_of = _flatten(splits)
    out = []
    for i, j, d in _cross_pairs(split_infos, split_of, near_threshold):
        a, b = flat[i], flat[j]
        out.append({
            "split_a": names[split_of[i]], "file_a": rel.get(a, a),
            "split_b": names[split_of[j]], "file_b": rel.get(b, b),
            "distance": d, "exact": split_infos[i].sha1 == split_infos[j].sha1,
        })
    return out


@dataclass
class _Listing:
    images: list[tuple[str, str, str]]  # path, class ("" = directly in root), split ("" = none)
    ignored: list[str]
    has_splits: bool

    def split_paths(self) -> dict[str, list[str]]:
        splits: dict[str, list[str]] = defaultdict(list)
        for path, _, split in self.images:
            splits[split].append(path)
        return splits


def _list_folder(root: Path) -> _Listing:
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    order = {"train": 0, "val": 1, "validation": 1, "test": 2}
    names = sorted((s for s in os.listdir(root) if (root / s).is_dir() and not s.startswith(".")),
                   key=lambda s: (order.get(s, 3), s))
    tops = [(root / s, s) for s in names] if has_splits else [(root, "")]
    images, ignored = [], []
    for top, split in tops:
        for path in walk_files(top):
            parts = path.relative_to(top).parts
            cls = parts[0] if len(parts) > 1 else ""
            if is_image_name(path.name):
                images.append((str(path), cls, split))
            elif cls:  # a non-image in a class folder is skipped by training: say so
                ignored.append(str(path))
    return _Listing(images, ignored, has_splits)


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def read_split_csv(path: str | os.PathLike) -> dict[str, list[str]]:
    """``split -> [file paths]`` from a run's split.csv (columns split, id, label)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as err:
        error = MissingFileError if isinstance(err, FileNotFoundError) else TriptychError
        raise error(f"cannot read split file {path}: {err.strerror or err}") from err
    if not rows or not {"split", "id"} <= set(rows[0]):
        raise InvalidArgumentError(f"{path}: expected a CSV with 'split' and 'id' columns (a run's split.csv)")
    splits: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        splits[row["split"]].append(row["id"])
    return dict(splits)


# --------------------------------------------------------------------------------------------
# Human-readable summary


def format_report(report: AuditReport, examples: int = EXAMPLES_SHOWN) -> str:
    """The human-readable summary: counts, then each kind of problem with up to ``examples`` paths."""
    summary = _Summary(_overview(report), examples)
    _problem_sections(report, summary)
    _duplicate_sections(report, summary)
    if report.borders.get("with_border"):
        b = report.borders
        summary.lines.append(f"black padding borders: {b['with_border']:,} of {b['checked']:,} images "
                             f"({b['fraction']:.1%}), covering {b['mean_border_area']:.0%} of such an image on average")
    if not report.problems:
        summary.lines.append("no problems found")
    return "\n".join(summary.lines)


@dataclass
class _Summary:
    lines: list[str]
    examples: int

    def section(self, title: str, items: list, show: Callable[[Any], str]) -> None:
        if items:
            self.lines.append(f"{title}: {len(items):,}")
            self.listing(items, show)

    def listing(self, items: list, show: Callable[[Any], str]) -> None:
        self.lines.extend(f"  {show(item)}" for item in items[: self.examples])
        if len(items) > self.examples:
            self.lines.append(f"  ... and {len(items) - self.examples:,} more (--json for all)")


def _overview(report: AuditReport) -> list[str]:
    lines = [f"Audit of {report.root}: {report.files:,} image files, {report.seconds:.1f} s"]
    if report.class_counts:
        width = max(len(c) for c in report.class_counts)
        lines.append("classes:")
        lines += [f"  {name:<{width}}  {count:>7,}" for name, count in report.class_counts.items()]
    if report.split_counts:
        lines.append("splits: " + ", ".join(f"{s} {sum(c.values()):,}" for s, c in report.split_counts.items()))
    lines.append("formats: " + ", ".join(f"{k} {v:,}" for k, v in report.formats.items())
                 + "; modes: " + ", ".join(f"{k} {v:,}" for k, v in report.modes.items()))
    return lines


def _problem_sections(report: AuditReport, summary: _Summary) -> None:
    summary.section("unreadable or truncated", report.unreadable, lambda x: f"{x['path']}: {x['reason']}")
    summary.section("decompression bombs (not decoded)", report.decompression_bombs,
                    lambda x: f"{x['path']}: {x['reason']}")
    summary.section("not plain RGB", report.non_rgb, lambda x: f"{x['path']}: {x['mode']} ({x['kind']})")
    summary.section(f"tiny (under {report.settings.get('min_side')} px on a side)", report.tiny,
                    lambda x: f"{x['path']}: {x['width']}x{x['height']}")
    summary.section("content does not match the extension", report.format_mismatch,
                    lambda x: f"{x['path']}: {x['format']} data named {x['extension']}")
    summary.section("non-image files in class folders (training skips them)", report.ignored_files, str)
    summary.section("images outside any class folder", report.outside_class_folders, str)


def _duplicate_sections(report: AuditReport, summary: _Summary) -> None:
    counts = report.summary_counts()
    if report.exact_duplicates:
        summary.lines.append(f"exact duplicates (same bytes): {len(report.exact_duplicates):,} group(s), "
                             f"{counts['exact_duplicate_extra_files']:,} redundant file(s), "
                             f"{counts['exact_duplicate_groups_across_classes']:,} group(s) span classes")
        summary.listing(report.exact_duplicates, lambda g: " = ".join(g["files"]))
    if report.near_duplicates:
        summary.lines.append(
            f"near duplicates (phash distance <= {report.settings.get('near_threshold')}): "
            f"{len(report.near_duplicates):,} group(s), {counts['near_duplicate_extra_files']:,} redundant "
            f"file(s), {counts['near_duplicate_groups_across_classes']:,} group(s) span classes")
        summary.listing(report.near_duplicates, lambda g: f"{' ~ '.join(g['files'])} (max distance {g['max_distance']})")
    if report.cross_split:
        summary.section("duplicates across splits (leak)", report.cross_split,
                        lambda x: f"{x['split_a']}:{x['file_a']} ~ {x['split_b']}:{x['file_b']} "
                        f"({'identical bytes' if x['exact'] else 'distance ' + str(x['distance'])})")
    elif report.cross_split is not None:
        summary.lines.append("duplicates across splits: none")


def write_report(report: AuditReport, path: str | os.PathLike) -> Path:
    return atomic_write_json(path, report.to_dict())


def report_json(report: AuditReport) -> str:
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False)
