"""The one progress bar of triptych (rich), for long loops over files or images.

    with progress_bar(len(paths), "auditing images") as advance:
        for path in paths:
            ...
            advance()

The bar is shown only when ``enabled`` is true, or, by default (``None``), when stderr is a
terminal, so logs and tests stay free of control characters.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def _wanted(enabled: bool | None) -> bool:
    return sys.stderr.isatty() if enabled is None else bool(enabled)


@contextmanager
def progress_bar(total: int, description: str, enabled: bool | None = None) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n=1)``; draws a transient bar of ``total`` steps when enabled."""
    if not _wanted(enabled) or total <= 0:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
        console=Console(stderr=True),
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
