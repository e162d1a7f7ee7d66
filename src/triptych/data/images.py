"""Image files, the one home for what training, the data audit and inference must agree on.

- which files are images (:data:`IMAGE_EXTENSIONS`) and how a folder is walked (:func:`walk_files`,
  :func:`list_images`);
- whether a file can be used: :func:`stat_image_file` (a readable, non-empty regular file),
  :func:`open_image` (Pillow parses the header only and refuses decompression bombs: a header
  claiming more than :data:`MAX_IMAGE_PIXELS` is never decoded), :func:`read_header` (plus the
  end-of-image marker of a JPEG or PNG, which a truncated file lacks);
- decoding and resizing exactly as training does (:func:`decode_image`, :func:`resize`,
  :func:`undecodable`, :func:`read_image`).

Pillow and NumPy only at import; the decoding and resizing functions import TensorFlow when
called, so ``triptych audit`` and ``triptych data`` never load it.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from triptych.errors import TriptychError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")  # what a folder contributes
# What tf.io.decode_image reads (by content, whatever the extension).
DECODABLE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "GIF", "WEBP"})
# Pillow's own default (Image.MAX_IMAGE_PIXELS, a 9459x9459 image): a header claiming more is a
# decompression bomb and is never decoded.
MAX_IMAGE_PIXELS = 89_478_485
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_TAIL_BYTES = 1024  # where a JPEG's end-of-image marker and a PNG's IEND chunk must be
_BOMB = re.compile(r"Image size \((\d+) pixels\) exceeds limit of \d+ pixels")
# warnings.catch_warnings changes process-wide state: threads take turns to open a header (cheap).
_OPEN_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------
# Listing


def is_image_name(name: str) -> bool:
    """A visible file with an image extension (what a dataset folder contributes)."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def walk_files(folder: str | os.PathLike) -> Iterator[Path]:
    """Every visible file under ``folder``, recursively: sorted within each folder, a folder's
    files before its subfolders'. Symbolic links to folders are not followed (no cycles); a
    folder that cannot be listed raises :class:`~triptych.errors.TriptychError`."""

    def unreadable(err: OSError) -> None:
        raise TriptychError(f"cannot list {err.filename}: {err.strerror or err}")

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if not filename.startswith("."):
                yield Path(dirpath) / filename


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files under ``folder`` (recursively), sorted by path text (the training order)."""
    return sorted((p for p in walk_files(folder) if is_image_name(p.name)), key=str)


# --------------------------------------------------------------------------------------------
# Checking a file without decoding it


class ImageError(Exception):
    """An image file that cannot be used; the message says why (callers report it and go on)."""


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says; Pillow reads it without decoding the pixels."""

    format: str | None
    mode: str
    width: int
    height: int
    has_alpha: bool
    truncated: bool = False  # no end-of-image marker (JPEG) or IEND chunk (PNG); only read_header looks

    @property
    def pixels(self) -> int:
        return self.width * self.height


class DecompressionBombError(ImageError):
    """The header claims more pixels than the limit: the file is never decoded."""

    def __init__(self, max_pixels: int, *, claimed: int | None = None, header: ImageHeader | None = None):
        self.header = header
        if header is not None:
            what = f"{header.width}x{header.height} = {header.pixels:,} pixels"
        else:
            what = f"{claimed:,} pixels" if claimed else "too many pixels"
        super().__init__(f"decompression bomb: the header claims {what}, over the limit of {max_pixels:,}; not decoded")


def stat_image_file(path: str | os.PathLike) -> os.stat_result:
    """``os.stat(path)`` of a file that can be opened as an image, else :class:`ImageError`:
    a name that is not UTF-8, a missing or unreadable file, a symbolic link loop, something
    other than a regular file, or an empty one."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        raise ImageError("the file name is not valid UTF-8; rename the file") from None
    try:
        info = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ImageError("cannot read: symbolic link loop") from None
        raise ImageError(f"cannot read: {err.strerror or err}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageError("not a regular file")
    if info.st_size == 0:
        raise ImageError("empty file (0 bytes)")
    return info


@contextmanager
def open_image(source: str | os.PathLike | IO[bytes], max_pixels: int = MAX_IMAGE_PIXELS) -> Iterator[Image.Image]:
    """Pillow's lazily opened image of ``source`` (a path or a seekable binary file): its header
    is parsed, its pixels are not decoded until ``image.load()``.

    Raises :class:`DecompressionBombError` when the header claims more than ``max_pixels``
    pixels, and :class:`ImageError` for anything that is not an image header Pillow can read.
    """
    try:
        # Pillow warns above its limit and raises above twice that; max_pixels decides here.
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
    except Image.DecompressionBombError as err:
        match = _BOMB.search(str(err))
        raise DecompressionBombError(max_pixels, claimed=int(match.group(1)) if match else None) from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"not an image (the file starts with {_head(source)!r})") from None
    except OSError as err:
        raise ImageError(f"cannot read: {err.strerror or err}") from None
    except Exception as err:  # noqa: BLE001 - any header Pillow chokes on is a bad file, not a crash
        raise ImageError(f"unreadable image header ({_describe(err)})") from None
    with image:
        header = header_of(image)
        if header.pixels > max_pixels:  # also when Pillow's own limit is switched off
            raise DecompressionBombError(max_pixels, header=header)
        if header.width < 1 or header.height < 1:
            raise ImageError(f"the header claims an empty {header.width}x{header.height} image")
        yield image


def header_of(image: Image.Image) -> ImageHeader:
    """What the header of an opened Pillow image says."""
    width, height = image.size
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    return ImageHeader(image.format, image.mode, width, height, has_alpha)


def read_header(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> ImageHeader:
    """The header of the image file ``path`` (see :func:`open_image`), with ``truncated`` set
    when a JPEG lacks its end-of-image marker or a PNG its IEND chunk in its last KiB."""
    try:
        with open(path, "rb") as handle:
            with open_image(handle, max_pixels) as image:
                header = header_of(image)
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - _TAIL_BYTES))
            tail = handle.read()
    except OSError as err:
        raise ImageError(f"cannot read: {err.strerror or err}") from None
    if header.format in ("JPEG", "MPO"):
        return replace(header, truncated=b"\xff\xd9" not in tail)
    if header.format == "PNG":
        return replace(header, truncated=b"IEND" not in tail)
    return header


def _head(source: str | os.PathLike | IO[bytes]) -> bytes:
    try:
        if hasattr(source, "read"):
            source.seek(0)  # type: ignore[union-attr]
            return source.read(16)  # type: ignore[union-attr]
        with open(source, "rb") as handle:
            return handle.read(16)
    except OSError:
        return b""


def _describe(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# --------------------------------------------------------------------------------------------
# Decoding and resizing, exactly as training does (TensorFlow)


def decode_image(data: Any) -> Any:
    """JPEG/PNG/BMP/GIF/WebP bytes (a string tensor) -> uint8 RGB tensor (greyscale is expanded,
    alpha dropped, an animation gives its first frame)."""
    import tensorflow as tf

    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def decode_file(path: Any) -> Any:
    """The image file ``path`` (a string or string tensor) decoded by :func:`decode_image`."""
    import tensorflow as tf

    return decode_image(tf.io.read_file(path))


def resize(image: Any, height: int, width: int) -> Any:
    """float32 ``height x width x 3``: antialiased bilinear, skipped (no blur) when the image is
    already that size (CIFAR at 32). Works in a tf.data map and eagerly, so training and
    inference resize identically."""
    import tensorflow as tf

    image = tf.cast(image, tf.float32)

    def resized() -> Any:
        return tf.ensure_shape(tf.image.resize(image, [height, width], antialias=True), [height, width, 3])

    def unchanged() -> Any:
        return tf.ensure_shape(image, [height, width, 3])

    if image.shape[:2].is_fully_defined():
        # Arrays (keras.datasets) and eager tensors: decide now. A tf.cond would also build the
        # pass-through branch, whose shape check fails before running for any other size.
        return unchanged() if tuple(image.shape[:2]) == (height, width) else resized()
    shape = tf.shape(image)  # decoded files: the size is known only when the graph runs
    return tf.cond(tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width)), unchanged, resized)


def undecodable(paths: Sequence[str], parallel: int = 4) -> dict[str, str]:
    """``{path: reason}`` for the files that :func:`decode_file` (what training runs) cannot decode.

    The files are decoded in parallel in a tf.data pipeline that skips failures; only the
    failures are decoded again, one by one, for their error message. Call it only on files
    whose header has been checked (a decompression bomb would be decoded).
    """
    import tensorflow as tf

    if not paths:
        return {}
    indices = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(paths), dtype=tf.int64), tf.constant([str(p) for p in paths]))
    )
    decoded = (
        indices.map(lambda i, path: (i, tf.shape(decode_file(path))[0]), num_parallel_calls=parallel)
        .ignore_errors()
        .batch(4096)
    )
    ok = np.zeros(len(paths), dtype=bool)
    for batch, _ in decoded:
        ok[batch.numpy()] = True
    failed = {}
    for index in np.flatnonzero(~ok):
        try:
            decode_file(tf.constant(str(paths[index])))
        except (tf.errors.OpError, ValueError) as err:
            failed[str(paths[index])] = f"cannot be decoded ({_tf_message(err)})"
    return failed


def read_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An image file as a uint8 RGB array, decoded as training decodes it; :class:`ImageError`
    if it is missing, a decompression bomb (judged from the header, never decoded) or cannot
    be decoded."""
    import tensorflow as tf

    path = Path(path)
    if not path.is_file():
        raise ImageError("no such file")
    try:
        with open_image(path, max_pixels):
            pass
    except DecompressionBombError:
        raise
    except ImageError:
        pass  # not Pillow's to judge: the decoder below reports it as training would meet it
    try:
        return decode_file(str(path)).numpy()
    except (tf.errors.OpError, ValueError) as err:
        raise ImageError(f"cannot decode image ({_tf_message(err)})") from err


def _tf_message(err: Exception) -> str:
    text = getattr(err, "message", None) or str(err)
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)  # "{{function_node __wrapped__DecodeImage_...}}"
    text = re.sub(r"\s*\[Op:\w+\].*$", "", text, flags=re.S)
    return " ".join(text.split())[:200] or err.__class__.__name__
