"""Turning a graphviz graph into SVG or PNG bytes on any machine that pip can install into.

Graphviz's own ``dot`` draws the diagrams when it is on PATH, so a machine with Graphviz gets
exactly its drawings. pip cannot install Graphviz, so on a fresh machine the graphviz-pure
program draws them instead: a self-contained port of ``dot`` (SVG and PNG, its own fonts, no
system libraries) that pip installs with triptych.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig

import graphviz

from triptych.errors import TriptychError

SYSTEM_DOT = "dot"
BUNDLED_DOT = "graphviz-pure"
# graphviz-pure draws with the fonts it carries (Arimo, Tinos, Cousine). Helvetica maps to Arimo,
# a sans-serif like the house font; a name it does not know, such as DejaVu Sans, falls back to a
# serif (Tinos).
BUNDLED_FONT = "Helvetica"


def system_dot() -> str | None:
    """The path of Graphviz's ``dot``, or None where Graphviz is not installed."""
    return shutil.which(SYSTEM_DOT)


def bundled_dot() -> str | None:
    """The path of the graphviz-pure program: among this Python's scripts (so a virtual
    environment need not be activated), else on PATH; None where it is not installed."""
    search = os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])
    return shutil.which(BUNDLED_DOT, path=search)


def render_bytes(graph: graphviz.Digraph, fmt: str) -> bytes:
    """``graph`` drawn in format ``fmt`` ("svg" or "png"), by Graphviz's ``dot`` when it is
    installed, else by graphviz-pure."""
    if system_dot():
        return graph.pipe(format=fmt)
    program = bundled_dot()
    if program is None:
        raise TriptychError(
            f"cannot draw diagrams: neither Graphviz's 'dot' nor the {BUNDLED_DOT} program (a dependency of "
            f"triptych) is installed; reinstall triptych (pip install -e .) or install Graphviz"
        )
    source = _with_bundled_fonts(graph).source.encode(graph.encoding)
    result = subprocess.run([program, f"-T{fmt}"], input=source, capture_output=True, check=False)
    # On success stderr is dropped: graphviz-pure warns that it estimates the width of non-ASCII
    # characters such as '×', which it still draws correctly.
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip() or f"exit status {result.returncode}"
        raise TriptychError(f"{BUNDLED_DOT} could not draw {graph.name!r} as {fmt}: {message}")
    return result.stdout


def _with_bundled_fonts(graph: graphviz.Digraph) -> graphviz.Digraph:
    """A copy of ``graph`` whose default fonts (graph, node and edge) are graphviz-pure's sans-serif."""
    copy = graph.copy()
    for defaults in (copy.graph_attr, copy.node_attr, copy.edge_attr):
        if "fontname" in defaults:
            defaults["fontname"] = BUNDLED_FONT
    return copy
