"""Where images come from: CIFAR-10 (mirror folder or keras.datasets) and class-per-subfolder folders.

A source is only a list of examples (file paths or in-memory arrays) with integer labels;
decoding happens later, in the tf.data pipeline, so folder datasets stream from disk.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from triptych.errors import TriptychError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
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
        raise TriptychError(
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
        raise TriptychError(f"dataset folder {root} does not exist (expected one subfolder per class)")
    if (root / "train").is_dir() and (root / "test").is_dir():
        paths, labels, classes = list_image_folder(root / "train")
        test_paths, test_labels, _ = list_image_folder(root / "test", class_names=classes)
        test = _file_examples(test_paths, test_labels)
    else:
        paths, labels, classes = list_image_folder(root)
        test = None
    return DataSource(
        name=root.name, class_names=classes, train=_file_examples(paths, labels), test=test, origin=f"folder {root}"
    )


def list_image_folder(
    root: Path, class_names: tuple[str, ...] | None = None
) -> tuple[list[str], list[int], tuple[str, ...]]:
    """Image files under ``root/<class>/`` (recursively), sorted, with integer labels.

    Class names are the sorted subfolder names unless given (a test split must use the
    training split's classes, in the same order).
    """
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if class_names is None:
        class_names = tuple(found)
    elif set(found) != set(class_names):
        raise TriptychError(
            f"{root}: class folders {sorted(found)} differ from the training classes {sorted(class_names)}"
        )
    if len(class_names) < 2:
        raise TriptychError(
            f"{root}: found {len(class_names)} class folder(s) {list(class_names)}; a classifier needs at least 2 "
            "(one subfolder of images per class)"
        )
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        files = sorted(str(p) for p in _walk_images(root / name))
        if not files:
            raise TriptychError(f"{root / name}: class folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths.extend(files)
        labels.extend([label] * len(files))
    return paths, labels, tuple(class_names)


def _walk_images(folder: Path):
    # os.walk without followlinks cannot loop forever on a symlink cycle.
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in filenames:
            if filename.lower().endswith(IMAGE_EXTENSIONS) and not filename.startswith("."):
                yield Path(dirpath) / filename


def _file_examples(paths: list[str], labels: list[int]) -> Examples:
    return Examples(labels=np.asarray(labels, dtype=np.int64), ids=np.asarray(paths))


def fingerprint(examples: Examples) -> str:
    """A short hash of what a split contains: file names, sizes and labels (or array bytes)."""
    digest = hashlib.sha256()
    digest.update(examples.labels.tobytes())
    if examples.images is not None:
        digest.update(np.ascontiguousarray(examples.images).tobytes())
    else:
        for path in examples.ids:
            digest.update(os.path.basename(path).encode())
            digest.update(str(os.path.getsize(path)).encode())
    return digest.hexdigest()[:16]
