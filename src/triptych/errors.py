"""The exceptions for mistakes a user can fix (bad config, missing data, a wrong argument, ...).

Every one is a :class:`TriptychError`, and most are also the standard exception a Python caller
expects (``ValueError`` for a bad argument, ``FileNotFoundError`` for a missing file), so a
notebook user can catch either. Messages name the Python argument and what it would accept; the
CLI maps them to its flags and prints them as a single line with a non-zero exit code. Anything
else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class TriptychError(Exception):
    """A user-facing error: the message alone must tell what went wrong and how to fix it."""


class InvalidArgumentError(TriptychError, ValueError):
    """An argument or config value that is out of range, of the wrong kind, or contradicts another."""


class MissingFileError(TriptychError, FileNotFoundError):
    """A file or folder the caller named does not exist (a dataset, weights file, run directory)."""

    def __init__(self, message: str) -> None:
        # FileNotFoundError(msg) would format as "[Errno None] ..." when given errno args; keep the text plain.
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
