"""WikiArt paintings of chosen styles from the Hugging Face hub, written as an image folder.

``fetch_wikiart`` streams the ``huggan/wikiart`` dataset (81,444 paintings; columns ``image``,
``artist``, ``genre``, ``style``, the last three ``ClassLabel`` integers) with the ``datasets``
library, keeps the rows of the requested styles and writes ``OUT/<style>/<sha1>.jpg`` until each
style has ``per_class`` images, plus ``OUT/manifest.csv`` (file, style, artist, genre, sha1).

- Nothing is downloaded beyond what streaming reads; no dataset cache is filled.
- Resumable and idempotent: a file is named after the sha1 of the source image bytes and
  written atomically, so rerunning the same command skips what is already there (it still
  streams those rows again: the hub offers no way to seek), and a complete folder returns at once.
- Offline: pass ``parquet=[files]`` (a local copy of the dataset's parquet shards, or any
  parquet file with the same columns); the same streaming and filtering code runs on it.

``datasets`` is imported only here, lazily: the rest of triptych works without it.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from PIL import Image

from triptych.errors import InvalidArgumentError, MissingFileError, TriptychError
from triptych.io import atomic_write_bytes, atomic_write_with
from triptych.progress import progress_bar

DEFAULT_SOURCE = "huggan/wikiart"
DEFAULT_STYLES = ("Romanticism", "Expressionism", "Post_Impressionism")
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("file", "style", "artist", "genre", "sha1", "source")
JPEG_QUALITY = 95
_MANIFEST_EVERY = 200  # rewrite the manifest after this many new files, so a kill loses little


@dataclass
class FetchResult:
    out: str
    per_class: int
    counts: dict[str, int]  # images of each style kept (written now or already there), up to per_class
    written: int = 0  # new files this run
    present: int = 0  # files that were already there
    bad: int = 0  # source rows whose image could not be decoded (skipped)
    source: str = ""
    short: dict[str, int] = field(default_factory=dict)  # styles the source ran out of

    @property
    def complete(self) -> bool:
        return not self.short


def fetch_wikiart(
    out: str | os.PathLike,
    styles: Sequence[str] = DEFAULT_STYLES,
    per_class: int = 1500,
    *,
    source: str = DEFAULT_SOURCE,
    parquet: Sequence[str | os.PathLike] | None = None,
    split: str = "train",
    progress: bool | None = None,
) -> FetchResult:
    """Write up to ``per_class`` images of each style under ``out/<style>/``; see the module doc.

    ``progress`` shows a bar (default: when stderr is a terminal).
    """
    out = _checked_arguments(out, styles, per_class)
    files = _expand_parquet(parquet) if parquet else None
    origin = ", ".join(map(str, files)) if files else source
    complete = _complete_folder(out, styles, per_class, origin)
    if complete is not None:
        return complete
    datasets = _import_datasets()
    stream = _open_stream(datasets, source, files, split)
    features = stream.features or {}
    _check_schema(stream, features, origin)
    wanted = _resolve_styles(styles, features.get("style"), origin)  # folder name -> value in the 'style' column
    if isinstance(features.get("image"), datasets.Image):
        # the encoded bytes, not a decoded PIL image: JPEGs are written as they are
        stream = stream.cast_column("image", datasets.Image(decode=False))
    by_value = {value: name for name, value in wanted.items()}
    stream = stream.filter(lambda value: value in by_value, input_columns="style")
    writer = _Writer(out, per_class, "parquet" if files else source, features, list(wanted), origin)
    _stream_into(writer, stream, by_value, progress)
    return writer.finished()


def _checked_arguments(out: str | os.PathLike, styles: Sequence[str], per_class: int) -> Path:
    if per_class < 1:
        raise InvalidArgumentError(f"per_class must be >= 1, got {per_class}")
    if isinstance(styles, str) or not styles:
        raise InvalidArgumentError(f"styles must be a non-empty list of style names, e.g. {list(DEFAULT_STYLES[:2])}, "
                                   f"got {styles!r}")
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise InvalidArgumentError(f"out must be a folder, but {path} exists and is not one")
    return path


def _complete_folder(out: Path, styles: Sequence[str], per_class: int, origin: str) -> FetchResult | None:
    """The result when ``out`` already holds ``per_class`` images of every style: a complete
    folder needs no network and no ``datasets`` (style names matched as in _resolve_styles)."""
    folders = {_normalise(p.name): p.name for p in out.iterdir() if p.is_dir()} if out.is_dir() else {}
    done = {folders.get(_normalise(s), s): _existing(out / folders.get(_normalise(s), s)) for s in styles}
    if not all(len(names) >= per_class for names in done.values()):
        return None
    return FetchResult(str(out), per_class, dict.fromkeys(done, per_class), present=per_class * len(done),
                       source=origin)


def _check_schema(stream: Any, features: dict[str, Any], origin: str) -> None:
    for column in ("image", "style"):
        if features and column not in features:
            raise InvalidArgumentError(f"{origin} has no '{column}' column (columns: {', '.join(features)}); "
                                       "expected the huggan/wikiart schema: image, artist, genre, style")
    if not features:  # no declared schema: make sure styles are not bare integers before scanning
        first = next(iter(stream.take(1)), None)
        if first is not None and isinstance(first.get("style"), int):
            raise InvalidArgumentError(f"{origin} gives styles as integers without their names (no ClassLabel "
                                       "feature); cannot tell which is which")


class _Writer:
    """Writes the streamed images of each style into ``out/<style>/`` and keeps the manifest."""

    def __init__(self, out: Path, per_class: int, provenance: str, features: dict[str, Any], styles: list[str],
                 origin: str):
        self.out, self.per_class, self.provenance = out, per_class, provenance
        self.label = {column: _namer(features.get(column)) for column in ("artist", "genre")}
        self.existing = {name: _existing(out / name) for name in styles}
        self.seen: dict[str, set[str]] = {name: set() for name in styles}
        self.manifest = _read_manifest(out / MANIFEST)
        self.result = FetchResult(str(out), per_class, dict.fromkeys(styles, 0), source=origin)
        self.unsaved = 0

    def full(self, name: str) -> bool:
        return len(self.seen[name]) >= self.per_class

    def done(self) -> bool:
        return all(self.full(name) for name in self.seen)

    def add(self, name: str, row: dict[str, Any]) -> bool:
        """Keep the row's image as one of style ``name``; False if it is broken or a repeat."""
        data = _image_bytes(row["image"])
        if data is None:
            self.result.bad += 1
            return False
        digest = hashlib.sha1(data).hexdigest()
        filename = f"{digest[:20]}.jpg"
        if filename in self.seen[name]:  # the same picture twice in the source
            return False
        if filename in self.existing[name]:
            self.result.present += 1
        elif not self._write(self.out / name / filename, data):
            return False
        self.seen[name].add(filename)
        self.manifest[f"{name}/{filename}"] = {
            "file": f"{name}/{filename}",
            "style": name,
            "artist": self.label["artist"](row.get("artist")),
            "genre": self.label["genre"](row.get("genre")),
            "sha1": digest,
            "source": self.provenance,
        }
        self.result.counts[name] = len(self.seen[name])
        if self.unsaved >= _MANIFEST_EVERY:
            self.save()
        return True

    def _write(self, path: Path, data: bytes) -> bool:
        jpeg = _as_jpeg(data)
        if jpeg is None:
            self.result.bad += 1
            return False
        atomic_write_bytes(path, jpeg)
        self.result.written += 1
        self.unsaved += 1
        return True

    def save(self) -> None:
        _write_manifest(self.out / MANIFEST, self.manifest)
        self.unsaved = 0

    def finished(self) -> FetchResult:
        self.save()
        self.result.short = {name: len(seen) for name, seen in self.seen.items() if len(seen) < self.per_class}
        return self.result


def _stream_into(writer: _Writer, stream: Iterable[dict[str, Any]], by_value: dict[Any, str],
                 progress: bool | None) -> None:
    """Feed the rows to ``writer`` until every style is full or the stream ends; the manifest
    is saved whatever happens, so a rerun resumes."""
    with progress_bar(writer.per_class * len(writer.seen), "fetching paintings", enabled=progress) as advance:
        try:
            for row in stream:
                name = by_value[row["style"]]
                if not writer.full(name) and writer.add(name, row):
                    advance()
                if writer.done():
                    break
        except (TriptychError, KeyboardInterrupt):
            writer.save()
            raise
        except Exception as err:  # network and hub errors while streaming
            writer.save()
            raise TriptychError(
                f"streaming {writer.result.source} failed after {writer.result.written} new images "
                f"({_describe(err)}); rerun the same command to resume"
            ) from err


# --------------------------------------------------------------------------------------------
# Opening the stream


def _import_datasets():
    try:
        import datasets
    except ImportError as err:
        raise TriptychError(
            "fetch_wikiart needs the Hugging Face 'datasets' package: pip install datasets"
        ) from err
    return datasets


def _expand_parquet(parquet: Sequence[str | os.PathLike]) -> list[str]:
    files: list[str] = []
    for entry in parquet:
        entry = os.path.expanduser(str(entry))
        if Path(entry).is_dir():
            matches = sorted(glob.glob(os.path.join(entry, "**", "*.parquet"), recursive=True))
        elif any(ch in entry for ch in "*?["):
            matches = sorted(glob.glob(entry, recursive=True))
        else:
            matches = [entry] if Path(entry).is_file() else []
        if not matches:
            raise MissingFileError(f"parquet: no such parquet file {entry}")
        files.extend(matches)
    return files


def _open_stream(datasets, source: str, files: list[str] | None, split: str):
    if files:
        try:
            return datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
        except Exception as err:  # unreadable or non-parquet files
            raise InvalidArgumentError(f"cannot read the parquet files {', '.join(files)}: {_describe(err)}") from err
    _check_hub_reachable(source)
    try:
        return datasets.load_dataset(source, split=split, streaming=True)
    except Exception as err:  # hub, network and "no such dataset/split" errors
        raise TriptychError(
            f"cannot stream {source} (split {split}) from the Hugging Face hub: {_describe(err)}. "
            "Connect to the internet, or pass parquet=[FILE, ...] with a local copy of its parquet files"
        ) from err


def _check_hub_reachable(source: str) -> None:
    """Fail in a moment, not after a minute of retries, when the hub cannot be reached."""
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    if any(os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on") for flag in flags):
        raise TriptychError(
            f"cannot stream {source}: offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); "
            "unset it and connect, or pass parquet=[FILE, ...] with a local copy of its parquet files"
        )
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # the proxy resolves names, not us
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as err:
        raise TriptychError(
            f"cannot stream {source}: no network ({host} does not resolve: {err}). "
            "Connect to the internet, or pass parquet=[FILE, ...] with a local copy of its parquet files"
        ) from err


def _describe(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# --------------------------------------------------------------------------------------------
# Styles and labels


def _normalise(name: str) -> str:
    return "_".join(name.replace("-", " ").replace("_", " ").split()).lower()


def _resolve_styles(styles: Iterable[str], feature: Any, origin: str) -> dict[str, Any]:
    """Folder name -> value of the 'style' column, for every requested style; unknown ones fail."""
    names = list(getattr(feature, "names", None) or [])
    if not names:  # a plain string column: take the names as given
        return {style: style for style in dict.fromkeys(styles)}
    lookup = {_normalise(n): (n, i) for i, n in enumerate(names)}
    wanted: dict[str, Any] = {}
    unknown = []
    for style in styles:
        match = lookup.get(_normalise(style))
        if match is None:
            unknown.append(style)
        else:
            wanted[match[0]] = match[1]
    if unknown:
        raise InvalidArgumentError(
            f"unknown style{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in {origin}; "
            f"valid styles: {', '.join(names)}"
        )
    return wanted


def _namer(feature: Any):
    names = getattr(feature, "names", None) or []

    def name(value: Any) -> str:
        if isinstance(value, int) and 0 <= value < len(names):
            return names[value]
        return "" if value is None else str(value)

    return name


# --------------------------------------------------------------------------------------------
# Images and files


def _image_bytes(value: Any) -> bytes | None:
    """The encoded image of one row: {'bytes', 'path'} (decode=False), raw bytes, or a PIL image."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        path = value.get("path")
        if path and os.path.isfile(path):
            return Path(path).read_bytes()
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue()
    return None


def _as_jpeg(data: bytes) -> bytes | None:
    """The bytes to write: an RGB JPEG unchanged, anything else re-encoded; None if undecodable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.format == "JPEG" and image.mode == "RGB":
                return data
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                rgba = image.convert("RGBA")
                rgb = Image.new("RGB", rgba.size, (255, 255, 255))
                rgb.paste(rgba, mask=rgba.getchannel("A"))
            else:
                rgb = image.convert("RGB")
    except Exception:  # noqa: BLE001 - a broken image in the source is skipped and counted
        return None
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _existing(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {p.name for p in folder.iterdir() if p.suffix.lower() == ".jpg" and not p.name.startswith(".")}


def _read_manifest(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["file"]: row for row in csv.DictReader(handle) if row.get("file")}


def _write_manifest(path: Path, rows: dict[str, dict[str, str]]) -> None:
    if not rows:
        return

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows[key] for key in sorted(rows))

    atomic_write_with(path, write)
