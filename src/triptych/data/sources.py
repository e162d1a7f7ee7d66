"""Where images come from: CIFAR-10 (mirror folder or keras.datasets) and class-per-subfolder folders.

A source is only a list of examples (file paths or in-memory arrays) with integer labels;
decoding happens later, in the tf.data pipeline, so folder datasets stream from disk.
:func:`fingerprint` names what a split holds by content (see ``triptych.data.digests``).

Before a run trains on image files, :func:`screen_images` checks the files it will use
(:func:`check_images`, with the file checks of ``triptych.data.images``): unreadable, empty,
non-image, truncated and undecodable files, and decompression bombs (judged from the header
alone, never decoded). A run stops before training with one line naming the first bad file,
or, with ``data.skip_bad``, leaves the bad files out and lists them in the manifest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from triptych.data.digests import file_digests
from triptych.data.images import (
    DECODABLE_FORMATS,
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    ImageError,
    list_images,
    read_header,
    stat_image_file,
    undecodable,
)
from triptych.errors import InvalidArgumentError, MissingFileError, TriptychError

MIRROR_ENV = "TRIPTYCH_MIRROR"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class Examples:
    """Labelled examples: either ``paths`` (image files) or ``images`` (uint8 NHWC arrays)."""

    labels: np.ndarray
    ids: np.ndarray  # file path, or "<source>/<split>/<index>" for in-memory images
    images: np.ndarray | None = None

    @property
    def is_files(self) -> bool:
        return self.images is None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> Examples:
        return Examples(
            labels=self.labels[indices],
            ids=self.ids[indices],
            images=None if self.images is None else self.images[indices],
        )


@dataclass(frozen=True)
class DataSource:
    """A dataset before splitting into train/val: its classes, examples and provenance."""

    name: str
    class_names: tuple[str, ...]
    train: Examples
    test: Examples | None  # None: no predefined test split, carve one out
    origin: str
    root: str | None = None  # the image folder, for file sources


def mirror_dir() -> Path | None:
    value = os.environ.get(MIRROR_ENV)
    return Path(value).expanduser() if value else None


def load_cifar10() -> DataSource:
    """CIFAR-10 from ``$TRIPTYCH_MIRROR/cifar10`` (train/ and test/ class folders) if present,
    else through ``keras.datasets.cifar10`` (downloads once, then cached in ~/.keras)."""
    mirror = mirror_dir()
    looked = []
    if mirror is not None:
        folder = mirror / "cifar10"
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            train = list_image_folder(folder / "train")
            test = list_image_folder(folder / "test", class_names=train[2])
            return DataSource(
                name="cifar10",
                class_names=train[2],
                train=_file_examples(*train[:2]),
                test=_file_examples(*test[:2]),
                origin=f"mirror folder {folder}",
                root=str(folder),
            )
        looked.append(f"{folder} (no train/ and test/ folders)")
    else:
        looked.append(f"${MIRROR_ENV} (not set)")
    return _cifar10_from_keras(looked)


def _cifar10_from_keras(looked: list[str]) -> DataSource:
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as err:  # urllib/HTTP/OS errors: no network and no cached copy
        raise MissingFileError(
            "CIFAR-10 not found: looked in "
            + ", ".join(looked)
            + f" and tried keras.datasets.cifar10 (download failed: {err.__class__.__name__}). "
            f"Set {MIRROR_ENV}=DIR where DIR/cifar10/train and DIR/cifar10/test hold class folders, "
            "or connect to the internet once."
        ) from err
    y_train, y_test = y_train.reshape(-1).astype(np.int64), y_test.reshape(-1).astype(np.int64)
    return DataSource(
        name="cifar10",
        class_names=CIFAR10_CLASSES,
        train=Examples(y_train, np.array([f"cifar10/train/{i}" for i in range(len(y_train))]), x_train),
        test=Examples(y_test, np.array([f"cifar10/test/{i}" for i in range(len(y_test))]), x_test),
        origin="keras.datasets.cifar10",
    )


def load_folder(root: str | os.PathLike) -> DataSource:
    """A class-per-subfolder dataset; ``root/train`` + ``root/test`` are used as given splits."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingFileError(f"dataset folder {root} does not exist (expected one subfolder per class)")
    if (root / "train").is_dir() and (root / "test").is_dir():
        paths, labels, classes = list_image_folder(root / "train")
        test_paths, test_labels, _ = list_image_folder(root / "test", class_names=classes)
        test = _file_examples(test_paths, test_labels)
    else:
        paths, labels, classes = list_image_folder(root)
        test = None
    return DataSource(
        name=root.name,
        class_names=classes,
        train=_file_examples(paths, labels),
        test=test,
        origin=f"folder {root}",
        root=str(root),
    )


def list_image_folder(
    root: Path, class_names: tuple[str, ...] | None = None
) -> tuple[list[str], list[int], tuple[str, ...]]:
    """Image files under ``root/<class>/`` (recursively), sorted, with integer labels.

    Class names are the sorted subfolder names unless given (a test split must use the
    training split's classes, in the same order).
    """
    try:
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as err:
        raise TriptychError(f"cannot list dataset folder {root}: {err.strerror or err}") from None
    _refuse_symlink_loops(root, found)
    if class_names is None:
        class_names = tuple(found)
    elif set(found) != set(class_names):
        raise InvalidArgumentError(
            f"{root}: class folders {sorted(found)} differ from the training classes {sorted(class_names)}"
        )
    if len(class_names) < 2:
        raise InvalidArgumentError(
            f"{root}: found {len(class_names)} class folder(s) {list(class_names)}; a classifier needs at least 2 "
            "(one subfolder of images per class)"
        )
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        files = [str(p) for p in list_images(root / name)]
        if not files:
            raise InvalidArgumentError(f"{root / name}: class folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths.extend(files)
        labels.extend([label] * len(files))
    return paths, labels, tuple(class_names)


def _refuse_symlink_loops(root: Path, names: Iterable[str]) -> None:
    """A class folder that is a link back to the dataset folder (or above it) would make every
    image a member of that class too."""
    real_root = os.path.realpath(root)
    for name in names:
        real = os.path.realpath(root / name)
        if real_root == real or real_root.startswith(real.rstrip(os.sep) + os.sep):
            raise InvalidArgumentError(
                f"{root / name}: symbolic link loop (the class folder points back to {real}); remove the link"
            )


def _file_examples(paths: list[str], labels: list[int]) -> Examples:
    return Examples(labels=np.asarray(labels, dtype=np.int64), ids=np.asarray(paths))


def fingerprint(examples: Examples) -> str:
    """A short hash of what a split holds: its labels, and each file's name and content (the
    sha256 of its bytes, remembered by path, size and mtime in ``triptych.data.digests``), or
    the bytes of in-memory images. An image edited in place changes it, whatever its size."""
    digest = hashlib.sha256()
    digest.update(examples.labels.tobytes())
    if examples.images is not None:
        digest.update(np.ascontiguousarray(examples.images).tobytes())
    else:
        for path, content in zip(examples.ids, file_digests(examples.ids)):
            digest.update(os.path.basename(path).encode())
            digest.update(content.encode())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Screening image files before training

# Every image is decoded once, exactly as training decodes it, when all the images a run uses
# hold at most this many pixels together (all of CIFAR-10: 61 M pixels; the WikiArt sample at
# 224 px: 226 M). Larger datasets get the header and end-of-file checks only, and only the files
# whose end looks wrong are decoded. Measured on a busy 2-core machine: 50,000 CIFAR-10 JPEGs in
# 15-20 s (header ~0.1 ms + decode ~0.1-0.2 ms a file), once per process (then cached).
FULL_DECODE_PIXELS = 400_000_000
# (abspath, size, mtime_ns, max_pixels) -> the file's header and, once decoded, its verdict
_CHECKED: dict[tuple[str, int, int, int], _Verdict] = {}


@dataclass(frozen=True, order=True)
class BadImage:
    """An image file that training cannot use, and why."""

    path: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


class BadImagesError(TriptychError):
    """Some of the image files a run would train or test on cannot be used."""

    def __init__(self, bad: Sequence[BadImage], total: int, folder: str | None = None):
        self.bad = list(bad)
        first = self.bad[0]
        super().__init__(
            f"{len(self.bad)} of the {total:,} image files this run uses cannot be used; first: {first.path}: "
            f"{first.reason}. Fix or remove them (triptych audit {folder or 'FOLDER'} lists them all), or rerun with "
            "--resume --skip-bad (data.skip_bad: true) to leave them out and list them in manifest.json"
        )


@dataclass(frozen=True)
class _Verdict:
    reason: str | None = None  # why the file cannot be used (None: fine so far)
    pixels: int = 0
    suspicious: bool = False  # the end of the file looks wrong (or an uncommon format): decode it
    truncated: bool = False  # no end-of-image marker
    decoded: bool = False  # the verdict includes a decode with TensorFlow
    key: tuple[str, int, int, int] | None = None


def check_images(
    paths: Sequence[str],
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
    full_decode_pixels: int = FULL_DECODE_PIXELS,
    workers: int = 2,
) -> list[BadImage]:
    """The files among ``paths`` that training cannot use, with a one-line reason each.

    1. Every file: it must be a readable, non-empty regular file with a UTF-8 name whose
       header (read by Pillow, which reads only the header) is an image format TensorFlow
       decodes, claiming at most ``max_pixels`` pixels (decompression-bomb guard: such a file
       is never decoded). A JPEG must end with its end-of-image marker and a PNG with its
       IEND chunk (a truncated file does not).
    2. Then the files are decoded exactly as training decodes them (``tf.io.decode_image``):
       all of them when together they hold at most ``full_decode_pixels`` pixels, else only
       those whose end looked wrong or whose format is uncommon (BMP, GIF, WebP).

    Greyscale, alpha, palette, 16-bit and CMYK images are fine (they are converted to RGB).
    Verdicts are cached in this process by (path, size, mtime): checking the same files again
    costs one ``stat`` each.
    """
    verdicts = _map(lambda p: _check_file(p, max_pixels), paths, workers)
    pending = [i for i, v in enumerate(verdicts) if v.reason is None and not v.decoded]
    if sum(verdicts[i].pixels for i in pending) > full_decode_pixels:
        pending = [i for i in pending if verdicts[i].suspicious]
    if pending:
        failed = undecodable([paths[i] for i in pending])
        for i in pending:
            reason = failed.get(paths[i])
            if reason is not None and verdicts[i].truncated:
                reason = f"truncated (no end-of-image marker) and {reason}"
            verdicts[i] = replace(verdicts[i], reason=reason, decoded=True)
    for verdict in verdicts:
        if verdict.key is not None:
            _CHECKED[verdict.key] = verdict
    return [BadImage(path, v.reason) for path, v in zip(paths, verdicts) if v.reason is not None]


def clear_check_cache() -> None:
    """Forget the verdicts of :func:`check_images` cached in this process."""
    _CHECKED.clear()


def _map(function: Callable[[str], Any], paths: Sequence[str], workers: int) -> list:
    # Header parsing holds the GIL, so threads only help where file system latency dominates
    # (network file systems).
    if workers <= 1 or len(paths) < 256:
        return [function(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, paths, chunksize=64))


def _check_file(path: str, max_pixels: int) -> _Verdict:
    """The verdict from the file's metadata and header (cached by path, size and mtime)."""
    try:
        info = stat_image_file(path)
    except ImageError as err:
        return _Verdict(str(err))
    key = (os.path.abspath(path), info.st_size, info.st_mtime_ns, max_pixels)
    cached = _CHECKED.get(key)
    if cached is not None:
        return cached
    try:
        header = read_header(path, max_pixels)
    except ImageError as err:
        return _Verdict(str(err), key=key)
    if header.format not in DECODABLE_FORMATS:
        return _Verdict(f"{header.format} image, which TensorFlow cannot decode (JPEG, PNG, BMP, GIF, WebP); "
                        "convert it", key=key)
    uncommon = header.format not in ("JPEG", "MPO", "PNG") or header.mode == "1"
    return _Verdict(None, header.pixels, header.truncated or uncommon, header.truncated, key=key)


def screen_images(
    source: DataSource,
    make_splits: Callable[[DataSource], Any],
    *,
    skip_bad: bool,
    on_bad: Callable[[list[BadImage]], None] = lambda bad: None,
    check: Callable[[Sequence[str]], list[BadImage]] = check_images,
) -> tuple[Any, list[BadImage]]:
    """Split ``source`` with ``make_splits`` and check the image files the splits use.

    Only the files a run uses are checked (a 12-per-class subset of CIFAR-10 checks 180 files,
    not 60,000). With ``skip_bad`` the bad files are removed from the source and it is split
    again (repeating until the splits hold no bad file); without it the first bad file stops
    the run with :class:`BadImagesError`. ``on_bad`` receives the bad files found so far,
    before an error is raised. Returns ``(splits, bad files)``.
    """
    bad: dict[str, BadImage] = {}
    checked: set[str] = set()
    current = source
    while True:
        splits = make_splits(current)
        if not current.train.is_files:
            return splits, []
        used = [str(p) for name in ("train", "val", "test") for p in getattr(splits, name).ids]
        todo = [p for p in used if p not in checked]
        found = check(todo)
        checked.update(todo)
        if not found:
            return splits, sorted(bad.values())
        bad.update((b.path, b) for b in found)
        on_bad(sorted(bad.values()))
        if not skip_bad:
            raise BadImagesError(found, len(used), source.root)
        current = without_files(source, bad)


def without_files(source: DataSource, paths: Iterable[str]) -> DataSource:
    """``source`` without the image files ``paths``; every class must keep at least one image."""
    drop = set(map(str, paths))

    def keep(examples: Examples | None, what: str) -> Examples | None:
        if examples is None or not examples.is_files:
            return examples
        mask = np.array([str(p) not in drop for p in examples.ids], dtype=bool)
        kept = examples.take(np.flatnonzero(mask))
        emptied = sorted(set(np.unique(examples.labels)) - set(np.unique(kept.labels)))
        if emptied:
            names = ", ".join(source.class_names[i] for i in emptied)
            raise TriptychError(f"no usable {what} image left in class {names} of {source.name} after leaving out "
                                f"{len(drop)} bad file(s); see bad_images in manifest.json")
        return kept

    return DataSource(
        name=source.name,
        class_names=source.class_names,
        train=keep(source.train, "training"),
        test=keep(source.test, "test"),
        origin=source.origin,
        root=source.root,
    )
