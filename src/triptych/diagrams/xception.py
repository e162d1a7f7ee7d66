"""Xception: the entry / middle / exit flow summary, and one depthwise separable convolution
opened up, both read from the nested ``base`` model.

Blocks are the ``blockN_`` layers of keras.applications' Xception; the unnamed residual
layers (``conv2d``, ``batch_normalization``, ``add``) belong to the block whose output they
join. The flows are found from the graph, not hard-coded: the middle flow is the run of
blocks whose shortcut is the identity, the entry flow what comes before it, the exit flow
what comes after.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from triptych.diagrams.core import AUXILIARY, COLORS, Diagram, Edge, describe, escape, human, new_graph
from triptych.diagrams.graph import LayerGraph, shape_text
from triptych.errors import InvalidArgumentError
from triptych.models.profile import separable_costs

BLOCK_RE = re.compile(r"^block(\d+)_")


@dataclass(frozen=True)
class FlowBlock:
    name: str  # "block5"
    layers: tuple[str, ...]  # all its layers, in order
    main_ops: tuple[str, ...]  # convolutions and pools of the main path
    shortcut_ops: tuple[str, ...]  # convolutions of a projection shortcut (empty: identity or none)
    shortcut: str  # "projection", "identity" or "none"
    input: str  # layer outside the block feeding it
    output: str  # its last layer (the residual add, if any)

    def signature(self, graph: LayerGraph) -> tuple:
        """What makes two blocks the same drawing: their operations and shapes."""
        return (
            tuple(describe(graph[n]) for n in self.main_ops),
            tuple(describe(graph[n]) for n in self.shortcut_ops),
            self.shortcut,
            graph[self.input].output_shape,
            graph[self.output].output_shape,
        )


def backbone(model):
    """The nested ``base`` model when there is one, else the model itself."""
    try:
        return model.get_layer("base")
    except ValueError:
        return model


def flow_blocks(graph: LayerGraph) -> list[FlowBlock]:
    members = _block_members(graph)
    return [_flow_block(graph, number, members[number]) for number in sorted(members)]


def _block_members(graph: LayerGraph) -> dict[int, list[str]]:
    """Block number -> its layers in order; unnamed residual layers join the block they feed."""
    owner: dict[str, int] = {}

    def owner_of(name: str) -> int | None:
        if name in owner:
            return owner[name]
        match = BLOCK_RE.match(name)
        node = graph[name]
        if match:
            found = int(match.group(1))
        elif node.class_name == "InputLayer":
            found = None
        elif node.class_name == "Add":
            named = [owner_of(p) for p in node.parents if BLOCK_RE.match(p)]
            found = max(named) if named else None
        else:  # an unnamed shortcut layer: it belongs where it ends up
            found = next((o for c in graph.consumers[name] if (o := owner_of(c)) is not None), None)
        if found is not None:
            owner[name] = found
        return found

    members: dict[int, list[str]] = {}
    for name in graph.order:
        block = owner_of(name)
        if block is not None:
            members.setdefault(block, []).append(name)
    return members


def _flow_block(graph: LayerGraph, number: int, names: list[str]) -> FlowBlock:
    inside = set(names)
    inputs = [p for n in names for p in graph[n].parents if p not in inside]
    outputs = [n for n in names if not graph.consumers[n] or any(c not in inside for c in graph.consumers[n])]
    shortcut, shortcut_layers = _shortcut(graph, names)
    main = [
        n for n in names
        if n not in shortcut_layers and graph[n].class_name not in AUXILIARY and graph[n].class_name != "Add"
    ]
    return FlowBlock(
        name=f"block{number}",
        layers=tuple(names),
        main_ops=tuple(main),
        shortcut_ops=tuple(n for n in reversed(shortcut_layers) if graph[n].class_name not in AUXILIARY),
        shortcut=shortcut,
        input=inputs[0],
        output=outputs[-1],
    )


def _shortcut(graph: LayerGraph, names: list[str]) -> tuple[str, list[str]]:
    """``("none" | "identity" | "projection", the projection's layers from the add backwards)``."""
    inside = set(names)
    adds = [n for n in names if graph[n].class_name == "Add"]
    if not adds:
        return "none", []
    other = [p for p in graph[adds[-1]].parents if not BLOCK_RE.match(p)]
    if not other:
        return "none", []
    if other[0] not in inside:
        return "identity", []
    layers, walk = [], other[0]
    while walk in inside:
        layers.append(walk)
        walk = graph[walk].parents[0]
    return "projection", layers


def flows(blocks: list[FlowBlock]) -> dict[str, list[FlowBlock]]:
    """Entry, middle (the run of identity-shortcut blocks) and exit flow."""
    identity = [i for i, b in enumerate(blocks) if b.shortcut == "identity"]
    if not identity:
        return {"entry": blocks, "middle": [], "exit": []}
    first, last = identity[0], identity[-1]
    return {"entry": blocks[:first], "middle": blocks[first : last + 1], "exit": blocks[last + 1 :]}


def draw_xception_flows(model) -> Diagram:
    graph = LayerGraph(backbone(model))
    blocks = flow_blocks(graph)
    if not blocks:
        raise InvalidArgumentError(f"{model.name} has no blockN_ layers: not an Xception")
    parts = flows(blocks)
    input_name = graph.order[0]
    title = (
        f"{model.name}: entry, middle and exit flow (drawn from the built model, input "
        f"{shape_text(graph[input_name].output_shape)})\n"
        f"{len(blocks)} blocks; the middle flow repeats one block ×{len(parts['middle'])}"
    )
    dot = new_graph(f"{model.name}_flows", title)
    diagram = Diagram(f"{model.name} flows", dot)
    dot.node("__input", f"<<B>input</B><BR/>{shape_text(graph[input_name].output_shape)}>", shape="ellipse",
             fillcolor=COLORS["tensor"])
    previous, previous_layer = "__input", input_name
    drawn_blocks: dict[str, list[str]] = {}
    for flow, members in parts.items():
        if members:
            previous, previous_layer = _draw_flow(graph, diagram, flow, members, previous, previous_layer, drawn_blocks)
    out_shape = shape_text(graph[previous_layer].output_shape)
    dot.node("__features", f"<<B>features</B><BR/>{out_shape}<BR/>"
             f'<FONT POINT-SIZE="9">then global avg pool → dense head</FONT>>', shape="ellipse",
             fillcolor=COLORS["tensor"])
    dot.edge(previous, "__features", label=f" {out_shape} ")
    diagram.edges.append(Edge(previous, "__features", "flow", out_shape))
    diagram.facts = {
        "flows": {flow: [b.name for b in members] for flow, members in parts.items()},
        "drawn_blocks": drawn_blocks,
        "block_outputs": {b.name: graph[b.output].output_shape for b in blocks},
        "shortcuts": {b.name: b.shortcut for b in blocks},
        "middle_repeats": len(parts["middle"]),
    }
    return diagram


def _draw_flow(
    graph: LayerGraph,
    diagram: Diagram,
    flow: str,
    members: list[FlowBlock],
    previous: str,
    previous_layer: str,
    drawn_blocks: dict[str, list[str]],
) -> tuple[str, str]:
    """One flow as a cluster, consecutive identical blocks drawn once with their count; returns
    the last node drawn and the layer whose output leaves it."""
    dot = diagram.graph
    runs: list[list[FlowBlock]] = []
    for block in members:
        if runs and runs[-1][0].signature(graph) == block.signature(graph):
            runs[-1].append(block)
        else:
            runs.append([block])
    with dot.subgraph(name=f"cluster_{flow}") as cluster:
        cluster.attr(label=f"{flow} flow ({len(members)} block{'s' if len(members) > 1 else ''})",
                     fontsize="15", style="rounded", color="#999999")
        for run in runs:
            node_id = run[0].name
            cluster.node(node_id, _block_label(graph, run), fillcolor=COLORS["separable"]
                         if any(graph[n].class_name == "SeparableConv2D" for n in run[0].main_ops)
                         else COLORS["conv"])
            shape = shape_text(graph[previous_layer].output_shape)
            dot.edge(previous, node_id, label=f" {shape} ")
            diagram.edges.append(Edge(previous, node_id, "flow", shape))
            drawn_blocks[node_id] = [b.name for b in run]
            previous, previous_layer = node_id, run[-1].output
    return previous, previous_layer


def _block_label(graph: LayerGraph, run: list[FlowBlock]) -> str:
    block = run[0]
    title = block.name if len(run) == 1 else f"{run[0].name} … {run[-1].name}   ×{len(run)}"
    lines = [f"<B>{escape(title)}</B>"]
    lines += [escape(describe(graph[n])) for n in block.main_ops]
    if block.shortcut == "projection":
        ops = ", ".join(describe(graph[n]) for n in block.shortcut_ops)
        lines.append(f'<FONT COLOR="{COLORS["shortcut"]}">+ shortcut: {escape(ops)}</FONT>')
    elif block.shortcut == "identity":
        lines.append(f'<FONT COLOR="{COLORS["shortcut"]}">+ identity shortcut</FONT>')
    return "<" + "<BR/>".join(lines) + ">"


def default_separable_layer(graph: LayerGraph) -> str:
    """The first separable convolution of the middle flow (else the first one at all)."""
    blocks = flow_blocks(graph)
    for block in flows(blocks)["middle"] + blocks:
        for name in block.main_ops:
            if graph[name].class_name == "SeparableConv2D":
                return name
    separable = graph.of_class("SeparableConv2D")
    if not separable:
        raise InvalidArgumentError("the model has no SeparableConv2D layer")
    return separable[0].name


def draw_separable_conv(model, layer: str | None = None, channels_shown: int = 3) -> Diagram:
    """One separable convolution opened up: a k×k depthwise filter per input channel, then a
    1×1 pointwise convolution; with its parameter and multiply-add counts next to those of
    an ordinary k×k convolution of the same shapes."""
    graph = LayerGraph(backbone(model))
    name = layer or default_separable_layer(graph)
    if name not in graph or graph[name].class_name != "SeparableConv2D":
        valid = [n.name for n in graph.of_class("SeparableConv2D")]
        raise InvalidArgumentError(f"{name!r} is not a SeparableConv2D layer of {model.name}; e.g. {', '.join(valid[:4])}")
    node = graph[name]
    sizes = _SeparableSizes.of(node)
    costs = separable_costs(node.layer, node.input_shapes[0], node.output_shape)
    ratio_params = costs["conv_params"] / costs["params"]
    ratio_macs = costs["conv_macs"] / costs["macs"]
    title = (f"{model.name}: the depthwise separable convolution {name}, opened up\n"
             f"{sizes.h}×{sizes.w}×{sizes.c_in} → {sizes.ho}×{sizes.wo}×{sizes.c_out}: {ratio_params:.1f}× fewer "
             f"parameters and {ratio_macs:.1f}× fewer multiply-adds than an ordinary {sizes.kh}×{sizes.kw} convolution")
    dot = new_graph(f"{name}_opened", title, rankdir="TB", ranksep="0.5", nodesep="0.25", ordering="out")
    diagram = Diagram(f"{name} opened up", dot)
    dot.node("in", f"<<B>input</B><BR/>{sizes.h}×{sizes.w}×{sizes.c_in}<BR/>"
             f'<FONT POINT-SIZE="9">{escape(node.parents[0])}</FONT>>', shape="box3d", style="filled",
             fillcolor=COLORS["tensor"])
    shown = _draw_depthwise(diagram, sizes, channels_shown)
    _draw_pointwise(diagram, sizes, name)
    dot.node("costs", _cost_table(name, sizes, costs, ratio_params, ratio_macs), shape="plaintext", style="")
    with dot.subgraph() as same:  # the table beside the tensor between the two steps
        same.attr(rank="same")
        same.node("mid")
        same.node("costs")
    dot.edge("mid", "costs", style="invis", minlen="4")
    diagram.facts = {"layer": name, "input_shape": node.input_shapes[0], "output_shape": node.output_shape, **costs,
                     "channels_drawn": len(shown), "channels": sizes.c_in}
    return diagram


@dataclass(frozen=True)
class _SeparableSizes:
    """The numbers a separable convolution's drawing shows."""

    h: int
    w: int
    c_in: int
    ho: int
    wo: int
    c_out: int
    kh: int
    kw: int
    multiplier: int

    @property
    def mid(self) -> int:  # channels between the depthwise and the pointwise step
        return self.c_in * self.multiplier

    @classmethod
    def of(cls, node) -> _SeparableSizes:
        h, w, c_in = (int(d) for d in node.input_shapes[0][1:])
        ho, wo, c_out = (int(d) for d in node.output_shape[1:])
        kh, kw = node.layer.kernel_size
        return cls(h, w, c_in, ho, wo, c_out, kh, kw, node.layer.depth_multiplier)


def _edge(diagram: Diagram, src: str, dst: str, kind: str, label: str = "") -> None:
    diagram.graph.edge(src, dst, label=f" {label} " if label else "")
    diagram.edges.append(Edge(src, dst, kind, label))


def _draw_depthwise(diagram: Diagram, sizes: _SeparableSizes, channels_shown: int) -> list[int]:
    """Step 1: the first few channels' filters (and the last one's, after dots); returns the channels drawn."""
    dot, c_in, multiplier = diagram.graph, sizes.c_in, sizes.multiplier
    shown = list(range(1, min(channels_shown, c_in) + 1))
    if c_in > len(shown):
        shown.append(c_in)
    with dot.subgraph(name="cluster_depthwise") as cluster:
        cluster.attr(label=f"1. depthwise: one {sizes.kh}×{sizes.kw} filter per channel ({c_in} filters"
                     f"{f', ×{multiplier}' if multiplier > 1 else ''})", fontsize="13", style="rounded,filled",
                     fillcolor="#f4fbf2", color="#7fbf7f")
        for index, channel in enumerate(shown):
            if c_in > len(shown) and index == len(shown) - 1:
                # a horizontal ellipsis: the filters stand in a row, and graphviz-pure's fonts lack "⋮"
                cluster.node("dw_more", "…", shape="plaintext", style="")
            cluster.node(f"dw{channel}", f"<channel {channel}<BR/>{sizes.kh}×{sizes.kw} filter>",
                         fillcolor=COLORS["depthwise"])
    for channel in shown:
        if channel == shown[-1] and "dw_more" in dot.source:
            dot.edge("in", "dw_more", style="invis")  # keeps the dots between the last two filters
        _edge(diagram, "in", f"dw{channel}", "depthwise", f"channel {channel}")
    dot.node("mid", f"<<B>{sizes.ho}×{sizes.wo}×{sizes.mid}</B><BR/>"
             '<FONT POINT-SIZE="9">channels stay apart:<BR/>no mixing yet</FONT>>', shape="box3d",
             style="filled", fillcolor=COLORS["tensor"])
    for channel in shown:
        _edge(diagram, f"dw{channel}", "mid", "depthwise")
    return shown


def _draw_pointwise(diagram: Diagram, sizes: _SeparableSizes, name: str) -> None:
    """Step 2: the 1×1 convolution that mixes the channels, and the output."""
    dot, mid = diagram.graph, sizes.mid
    with dot.subgraph(name="cluster_pointwise") as cluster:
        cluster.attr(label="2. pointwise: 1×1 convolution mixes channels", fontsize="13", style="rounded,filled",
                     fillcolor="#eef8ea", color="#7fbf7f")
        cluster.node("pw", f"<<B>{sizes.c_out} filters of 1×1×{mid}</B><BR/>"
                     f'<FONT POINT-SIZE="9">each output channel = weighted sum of all {mid}</FONT>>',
                     fillcolor=COLORS["pointwise"])
    _edge(diagram, "mid", "pw", "pointwise", f"{sizes.ho}×{sizes.wo}×{mid}")
    dot.node("out", f"<<B>output</B><BR/>{sizes.ho}×{sizes.wo}×{sizes.c_out}<BR/>"
             f'<FONT POINT-SIZE="9">{escape(name)}</FONT>>', shape="box3d", style="filled",
             fillcolor=COLORS["tensor"])
    _edge(diagram, "pw", "out", "pointwise", f"{sizes.ho}×{sizes.wo}×{sizes.c_out}")


def _cost_row(label: str, params: int, macs: int, bold: bool = False) -> str:
    b, nb = ("<B>", "</B>") if bold else ("", "")
    return (f"<TR><TD ALIGN='LEFT'>{b}{escape(label)}{nb}</TD><TD ALIGN='RIGHT'>{b}{params:,}{nb}</TD>"
            f"<TD ALIGN='RIGHT'>{b}{human(macs)}{nb}</TD></TR>")


def _cost_table(name: str, sizes: _SeparableSizes, costs: dict, ratio_params: float, ratio_macs: float) -> str:
    """Parameters and multiply-adds: depthwise, pointwise, their total, an ordinary convolution."""
    kh, kw, c_in, c_out, multiplier = sizes.kh, sizes.kw, sizes.c_in, sizes.c_out, sizes.multiplier
    bias_note = f" + {costs['bias_params']} bias" if costs["bias_params"] else ""
    return (
        "<<TABLE BORDER='0' CELLBORDER='1' CELLSPACING='0' CELLPADDING='5' BGCOLOR='white'>"
        f"<TR><TD ALIGN='LEFT'><B>{escape(name)}</B> ({sizes.ho}×{sizes.wo} outputs)</TD><TD><B>parameters</B></TD>"
        "<TD><B>multiply-adds</B></TD></TR>"
        + _cost_row(f"depthwise {kh}×{kw}: {kh}·{kw}·{c_in}" + (f"·{multiplier}" if multiplier > 1 else ""),
                    costs["depthwise_params"], costs["depthwise_macs"])
        + _cost_row(f"pointwise 1×1: {sizes.mid}·{c_out}", costs["pointwise_params"], costs["pointwise_macs"])
        + _cost_row(f"separable, total{bias_note}", costs["params"], costs["macs"], bold=True)
        + _cost_row(f"ordinary {kh}×{kw} conv: {kh}·{kw}·{c_in}·{c_out}", costs["conv_params"], costs["conv_macs"])
        + f"<TR><TD ALIGN='LEFT'>saving</TD><TD ALIGN='RIGHT'>{ratio_params:.1f}×</TD>"
        f"<TD ALIGN='RIGHT'>{ratio_macs:.1f}×</TD></TR>"
        "</TABLE>>"
    )
