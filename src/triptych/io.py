"""Atomic file writes: a reader never sees a half-written output file.

Everything is written to a temporary file in the same directory and then renamed,
which POSIX guarantees to be atomic on one file system.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the final suffix (``.keras``, ``.h5``) because some writers
    (Keras) check it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=suffix or "".join(path.suffixes) or ".tmp"
    )
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give the final file the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# The temporary name atomic_path gives: .FINAL.XXXXXXXX[suffix] (mkstemp's 8 random characters,
# then the final name's suffixes, which some writers check).
TEMP_NAME = re.compile(r"^\.(?P<final>.+?)\.[a-z0-9_]{8}(\.[^/]*)?$")


def final_name(name: str) -> str | None:
    """The file a temporary name of :func:`atomic_path` stands for, or None for any other name."""
    match = TEMP_NAME.match(name)
    return match["final"] if match else None


def remove_stale_temp_files(root: str | os.PathLike) -> int:
    """Delete the temporary files of atomic writes under ``root`` (a SIGKILL skips their clean-up);
    returns how many."""
    removed = 0
    for path in Path(root).rglob(".*"):
        if final_name(path.name) is not None and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` (for library writers such as
    ``DataFrame.to_csv`` or ``model.save``)."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays show up in metric dicts; make them plain JSON.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
