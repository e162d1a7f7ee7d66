"""Content digests of files (sha256 of their bytes), remembered by (path, size, mtime).

The data fingerprint (run manifests, feature-cache keys) must change when an image's pixels
change, even when its name and size do not. Hashing every byte of a dataset on every run costs
seconds (CIFAR-10: 60,000 files), so each digest is remembered in this process and in a small
JSON memo in the cache folder (``$TRIPTYCH_CACHE``, default ``~/.cache/triptych``): a rerun on
unchanged files costs one ``stat`` a file. A rewritten file has a new mtime and is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from triptych.cache import cache_dir
from triptych.io import atomic_write_text

MEMO_FILE = "file-digests.json"
# A file modified this recently may be rewritten again within the file system's timestamp
# resolution, keeping its mtime: its digest is used but not remembered.
RACY_SECONDS = 2.0
_VERSION = "triptych-file-digests-1"
_MEMO: dict[str, tuple[int, int, str]] = {}  # absolute path -> (size, mtime_ns, sha256 hex)
_LOADED: set[Path] = set()


def memo_path() -> Path:
    """Where the digests are remembered: ``$TRIPTYCH_CACHE/file-digests.json``."""
    return cache_dir() / MEMO_FILE


def file_digests(paths: Sequence[str | os.PathLike], memo: str | os.PathLike | None = None) -> list[str]:
    """The sha256 (hex) of each file's bytes, in order; remembered ones cost a ``stat`` each.

    ``memo`` is the JSON file to remember them in (default :func:`memo_path`); a memo that
    cannot be read or written only makes the next call slower.
    """
    memo = Path(memo) if memo is not None else memo_path()
    _load(memo)
    now_ns = time.time_ns()
    digests, fresh = [], 0
    for path in paths:
        info = os.stat(path)
        key = os.path.abspath(path)
        known = _MEMO.get(key)
        if known is not None and known[:2] == (info.st_size, info.st_mtime_ns):
            digests.append(known[2])
            continue
        digest = _sha256(path)
        digests.append(digest)
        if now_ns - info.st_mtime_ns > RACY_SECONDS * 1e9:
            _MEMO[key] = (info.st_size, info.st_mtime_ns, digest)
            fresh += 1
    if fresh:
        _save(memo)
    return digests


def clear_memo() -> None:
    """Forget the digests remembered in this process (not the memo file)."""
    _MEMO.clear()
    _LOADED.clear()


def _sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _load(memo: Path) -> None:
    if memo in _LOADED:
        return
    _LOADED.add(memo)
    _merge(memo)


def _merge(memo: Path) -> None:
    """Add the memo file's entries to the ones in memory (which win: they are newer)."""
    try:
        data = json.loads(memo.read_text(encoding="utf-8"))
        if data.get("version") != _VERSION:
            return
        for path, (size, mtime_ns, digest) in data["files"].items():
            _MEMO.setdefault(path, (int(size), int(mtime_ns), str(digest)))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return  # no memo yet, or a damaged one: it is rebuilt


def _save(memo: Path) -> None:
    _merge(memo)  # keep what other processes remembered since this one read the file
    for path in [p for p in _MEMO if not os.path.exists(p)]:
        del _MEMO[path]  # deleted files (temporary folders): the memo does not grow forever
    try:
        data = {"version": _VERSION, "files": {p: list(v) for p, v in _MEMO.items()}}
        atomic_write_text(memo, json.dumps(data, separators=(",", ":")))  # compact: 60,000 entries
    except OSError:
        pass  # a read-only cache folder: digests are recomputed next time, nothing else breaks
