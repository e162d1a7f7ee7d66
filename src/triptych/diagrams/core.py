"""What every diagram is: a graphviz graph plus the list of edges it draws (for tests), and
how it is written to SVG and PNG."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import graphviz

from triptych.diagrams.render import render_bytes
from triptych.io import atomic_write_bytes

FONT = "DejaVu Sans"
PNG_DPI = 144
PNG_MAX_INCHES = 36  # big graphs (a 16-layer dense block) are scaled down to at most ~5000 px

# One colour per kind of thing, the same in every diagram.
COLORS = {
    "conv": "#dbe9f6",
    "separable": "#d9f0d3",
    "depthwise": "#e5f5e0",
    "pointwise": "#c7e9c0",
    "add": "#fde0c5",
    "concat": "#fde0c5",
    "pool": "#eeeeee",
    "tensor": "#ffffff",
    "note": "#fffbe6",
    "shortcut": "#d95f02",
    "main": "#333333",
}


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    kind: str  # "main", "shortcut", "dense", "transition", ...
    label: str = ""


@dataclass
class Diagram:
    """A drawing and the facts it shows, so that tests can compare it with the model."""

    name: str
    graph: Any  # graphviz.Digraph
    edges: list[Edge] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def count(self, kind: str) -> int:
        return sum(1 for edge in self.edges if edge.kind == kind)

    def edge_counts(self) -> dict[str, int]:
        return dict(Counter(edge.kind for edge in self.edges))

    @property
    def source(self) -> str:
        return self.graph.source

    def render(self, out: str | Path) -> list[Path]:
        """Write ``out`` with suffix ``.svg`` and ``.png``; returns both paths."""
        out = Path(out)
        svg_path, png_path = out.with_suffix(".svg"), out.with_suffix(".png")
        png_graph = self.graph.copy()
        png_graph.graph_attr["dpi"] = str(PNG_DPI)
        png_graph.graph_attr["size"] = f"{PNG_MAX_INCHES},{PNG_MAX_INCHES}"
        svg = render_bytes(self.graph, "svg")
        png = render_bytes(png_graph, "png")
        atomic_write_bytes(svg_path, svg)
        atomic_write_bytes(png_path, png)
        return [svg_path, png_path]


def new_graph(name: str, title: str, rankdir: str = "TB", **graph_attr: str) -> graphviz.Digraph:
    """A graph in the house style: one font, colours from ``COLORS``, rounded boxes.

    The defaults live in the graph's attribute dictionaries (not its body) so that a renderer can
    swap the font (render.py does, for graphviz-pure)."""
    attrs = {"rankdir": rankdir, "label": title, "labelloc": "t", "fontname": FONT, "fontsize": "18",
             "bgcolor": "white", "pad": "0.3", "nodesep": "0.35", "ranksep": "0.45"}
    node = {"fontname": FONT, "fontsize": "12", "shape": "box", "style": "rounded,filled",
            "fillcolor": COLORS["conv"], "color": "#555555", "margin": "0.15,0.06"}
    edge = {"fontname": FONT, "fontsize": "10", "color": COLORS["main"], "arrowsize": "0.7"}
    return graphviz.Digraph(name=name, graph_attr={**attrs, **graph_attr}, node_attr=node, edge_attr=edge)


def escape(text: str) -> str:
    """Escape for graphviz HTML-like labels."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def human(n: float) -> str:
    """1234567 -> '1.23 M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:g}"


# Layers drawn inside the box of the layer they follow (or, for padding, precede).
AUXILIARY = frozenset({"BatchNormalization", "ReLU", "Activation", "ZeroPadding2D", "Dropout"})


def describe(node) -> str:
    """A short human description of one layer, from its configuration."""
    layer, kind = node.layer, node.class_name
    if kind in ("Conv2D", "SeparableConv2D", "DepthwiseConv2D"):
        kh, kw = layer.kernel_size
        what = {"Conv2D": "conv", "SeparableConv2D": "sep conv", "DepthwiseConv2D": "depthwise"}[kind]
        text = f"{kh}×{kw} {what}"
        if kind != "DepthwiseConv2D":
            text += f", {layer.filters}"
        stride = layer.strides[0]
        return text + (f", stride {stride}" if stride > 1 else "")
    if kind in ("MaxPooling2D", "AveragePooling2D"):
        ph, pw = layer.pool_size
        what = "max pool" if kind.startswith("Max") else "avg pool"
        return f"{ph}×{pw} {what}, stride {layer.strides[0]}"
    if kind == "BatchNormalization":
        return "BN"
    if kind == "ReLU":
        return "ReLU"
    if kind == "Activation":
        return getattr(layer.activation, "__name__", "act").replace("relu", "ReLU")
    if kind == "ZeroPadding2D":
        return "pad"
    if kind == "Add":
        return "add"
    if kind == "Concatenate":
        return "concat"
    if kind == "Dense":
        return f"dense, {layer.units}"
    if kind == "GlobalAveragePooling2D":
        return "global avg pool"
    return kind


def group_path(graph, names: list[str]) -> list[list[str]]:
    """Split a linear run of layers into boxes: each main layer (conv, add, pool) with the
    auxiliary layers (BN, ReLU, padding) around it."""
    groups: list[list[str]] = []
    for name in names:
        kind = graph[name].class_name
        only_padding = groups and all(graph[n].class_name == "ZeroPadding2D" for n in groups[-1])
        if kind in AUXILIARY and groups and not (kind == "ZeroPadding2D"):
            groups[-1].append(name)
        elif kind not in AUXILIARY and only_padding:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups


def group_label(graph, names: list[str], title: str | None = None) -> str:
    """HTML label: the main layer's description in bold, the layer names and helpers small."""
    main = [n for n in names if graph[n].class_name not in AUXILIARY] or names
    head = title or " + ".join(describe(graph[n]) for n in main)
    helpers = [describe(graph[n]) for n in names if n not in main and graph[n].class_name != "ZeroPadding2D"]
    small = main[0] + (" → " + " → ".join(helpers) if helpers else "")
    return f'<<B>{escape(head)}</B><BR/><FONT POINT-SIZE="9">{escape(small)}</FONT>>'
