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
from triptych.errors import TriptychError
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
    blocks = []
    for number in sorted(members):
        names = members[number]
        inside = set(names)
        inputs = [p for n in names for p in graph[n].parents if p not in inside]
        outputs = [n for n in names if not graph.consumers[n] or any(c not in inside for c in graph.consumers[n])]
        adds = [n for n in names if graph[n].class_name == "Add"]
        shortcut, shortcut_layers = "none", []
        if adds:
            add = adds[-1]
            other = [p for p in graph[add].parents if not BLOCK_RE.match(p)]
            if other and other[0] not in inside:
                shortcut = "identity"
            elif other:
                shortcut = "projection"
                walk = other[0]
                while walk in inside:
                    shortcut_layers.append(walk)
                    walk = graph[walk].parents[0]
        main = [
            n for n in names
            if n not in shortcut_layers and graph[n].class_name not in AUXILIARY and graph[n].class_name != "Add"
        ]
        blocks.append(
            FlowBlock(
                name=f"block{number}",
                layers=tuple(names),
                main_ops=tuple(main),
                shortcut_ops=tuple(n for n in reversed(shortcut_layers) if graph[n].class_name not in AUXILIARY),
                shortcut=shortcut,
                input=inputs[0],
                output=outputs[-1],
            )
        )
    return blocks


def flows(blocks: list[FlowBlock]) -> dict[str, list[FlowBlock]]:
    """Entry, middle (the run of identity-shortcut blocks) and exit flow."""
    identity = [i for i, b in enumerate(blocks) if b.shortcut == "identity"]
    if not identity:
        return {"entry": blocks, "middle": [], "exit": []}
    first, last = identity[0], identity[-1]
    return {"entry": blocks[:first], "middle": blocks[first : last + 1], "exit": blocks[last + 1 :]}


def draw_xception_flows(model) -> Diagram:
    base = backbone(model)
    graph = LayerGraph(base)
    blocks = flow_blocks(graph)
    if not blocks:
        raise TriptychError(f"{model.name} has no blockN_ layers: not an Xception")
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
        if not members:
            continue
        # Consecutive identical blocks are drawn once, with their count.
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
        raise TriptychError("the model has no SeparableConv2D layer")
    return separable[0].name


def draw_separable_conv(model, layer: str | None = None, channels_shown: int = 3) -> Diagram:
    """One separable convolution opened up: a k×k depthwise filter per input channel, then a
    1×1 pointwise convolution; with its parameter and multiply-add counts next to those of
    an ordinary k×k convolution of the same shapes."""
    base = backbone(model)
    graph = LayerGraph(base)
    name = layer or default_separable_layer(graph)
    if name not in graph or graph[name].class_name != "SeparableConv2D":
        valid = [n.name for n in graph.of_class("SeparableConv2D")]
        raise TriptychError(f"{name!r} is not a SeparableConv2D layer of {model.name}; e.g. {', '.join(valid[:4])}")
    node = graph[name]
    sep = node.layer
    in_shape, out_shape = node.input_shapes[0], node.output_shape
    costs = separable_costs(sep, in_shape, out_shape)
    h, w, c_in = (int(d) for d in in_shape[1:])
    ho, wo, c_out = (int(d) for d in out_shape[1:])
    kh, kw = sep.kernel_size
    multiplier = sep.depth_multiplier
    mid = c_in * multiplier
    ratio_params = costs["conv_params"] / costs["params"]
    ratio_macs = costs["conv_macs"] / costs["macs"]

    title = (f"{model.name}: the depthwise separable convolution {name}, opened up\n"
             f"{h}×{w}×{c_in} → {ho}×{wo}×{c_out}: {ratio_params:.1f}× fewer parameters and "
             f"{ratio_macs:.1f}× fewer multiply-adds than an ordinary {kh}×{kw} convolution")
    dot = new_graph(f"{name}_opened", title, rankdir="TB", ranksep="0.5", nodesep="0.25", ordering="out")
    diagram = Diagram(f"{name} opened up", dot)

    def edge(src: str, dst: str, kind: str, label: str = "") -> None:
        dot.edge(src, dst, label=f" {label} " if label else "")
        diagram.edges.append(Edge(src, dst, kind, label))

    dot.node("in", f"<<B>input</B><BR/>{h}×{w}×{c_in}<BR/>"
             f'<FONT POINT-SIZE="9">{escape(node.parents[0])}</FONT>>', shape="box3d", style="filled",
             fillcolor=COLORS["tensor"])
    shown = list(range(1, min(channels_shown, c_in) + 1))
    if c_in > len(shown):
        shown.append(c_in)
    with dot.subgraph(name="cluster_depthwise") as cluster:
        cluster.attr(label=f"1. depthwise: one {kh}×{kw} filter per channel ({c_in} filters"
                     f"{f', ×{multiplier}' if multiplier > 1 else ''})", fontsize="13", style="rounded,filled",
                     fillcolor="#f4fbf2", color="#7fbf7f")
        for index, channel in enumerate(shown):
            if c_in > len(shown) and index == len(shown) - 1:
                cluster.node("dw_more", "⋮", shape="plaintext", style="")
            cluster.node(f"dw{channel}", f"<channel {channel}<BR/>{kh}×{kw} filter>", fillcolor=COLORS["depthwise"])
    for channel in shown:
        if channel == shown[-1] and "dw_more" in dot.source:
            dot.edge("in", "dw_more", style="invis")  # keeps the dots between the last two filters
        edge("in", f"dw{channel}", "depthwise", f"channel {channel}")
    dot.node("mid", f"<<B>{ho}×{wo}×{mid}</B><BR/>"
             '<FONT POINT-SIZE="9">channels stay apart:<BR/>no mixing yet</FONT>>', shape="box3d",
             style="filled", fillcolor=COLORS["tensor"])
    for channel in shown:
        edge(f"dw{channel}", "mid", "depthwise")
    with dot.subgraph(name="cluster_pointwise") as cluster:
        cluster.attr(label="2. pointwise: 1×1 convolution mixes channels", fontsize="13", style="rounded,filled",
                     fillcolor="#eef8ea", color="#7fbf7f")
        cluster.node("pw", f"<<B>{c_out} filters of 1×1×{mid}</B><BR/>"
                     f'<FONT POINT-SIZE="9">each output channel = weighted sum of all {mid}</FONT>>',
                     fillcolor=COLORS["pointwise"])
    edge("mid", "pw", "pointwise", f"{ho}×{wo}×{mid}")
    dot.node("out", f"<<B>output</B><BR/>{ho}×{wo}×{c_out}<BR/>"
             f'<FONT POINT-SIZE="9">{escape(name)}</FONT>>', shape="box3d", style="filled",
             fillcolor=COLORS["tensor"])
    edge("pw", "out", "pointwise", f"{ho}×{wo}×{c_out}")

    def row(label: str, params: int, macs: int, bold: bool = False) -> str:
        b, nb = ("<B>", "</B>") if bold else ("", "")
        return (f"<TR><TD ALIGN='LEFT'>{b}{escape(label)}{nb}</TD><TD ALIGN='RIGHT'>{b}{params:,}{nb}</TD>"
                f"<TD ALIGN='RIGHT'>{b}{human(macs)}{nb}</TD></TR>")

    bias_note = f" + {costs['bias_params']} bias" if costs["bias_params"] else ""
    table = (
        "<<TABLE BORDER='0' CELLBORDER='1' CELLSPACING='0' CELLPADDING='5' BGCOLOR='white'>"
        f"<TR><TD ALIGN='LEFT'><B>{escape(name)}</B> ({ho}×{wo} outputs)</TD><TD><B>parameters</B></TD>"
        "<TD><B>multiply-adds</B></TD></TR>"
        + row(f"depthwise {kh}×{kw}: {kh}·{kw}·{c_in}" + (f"·{multiplier}" if multiplier > 1 else ""),
              costs["depthwise_params"], costs["depthwise_macs"])
        + row(f"pointwise 1×1: {mid}·{c_out}", costs["pointwise_params"], costs["pointwise_macs"])
        + row(f"separable, total{bias_note}", costs["params"], costs["macs"], bold=True)
        + row(f"ordinary {kh}×{kw} conv: {kh}·{kw}·{c_in}·{c_out}", costs["conv_params"], costs["conv_macs"])
        + f"<TR><TD ALIGN='LEFT'>saving</TD><TD ALIGN='RIGHT'>{ratio_params:.1f}×</TD>"
        f"<TD ALIGN='RIGHT'>{ratio_macs:.1f}×</TD></TR>"
        "</TABLE>>"
    )
    dot.node("costs", table, shape="plaintext", style="")
    with dot.subgraph() as same:  # the table beside the tensor between the two steps
        same.attr(rank="same")
        same.node("mid")
        same.node("costs")
    dot.edge("mid", "costs", style="invis", minlen="4")
    diagram.facts = {"layer": name, "input_shape": in_shape, "output_shape": out_shape, **costs,
                     "channels_drawn": len(shown), "channels": c_in}
    return diagram
