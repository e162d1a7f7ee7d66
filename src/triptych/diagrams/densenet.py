"""DenseNet: one dense block, in which every layer receives the feature maps of all earlier
layers, followed by its transition layer, read from the nested ``base`` model.

keras.applications builds the "concatenation of all earlier outputs" as a chain
(``convB_blockI_concat = concat(convB_block{I-1}_concat, convB_blockI_2_conv)``); opening the
chain up gives each layer's real sources, so the diagram draws one edge per source: a block of
L layers has L(L+1)/2 of them, and the transition one more per layer plus the block input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from triptych.diagrams.core import AUXILIARY, COLORS, Diagram, Edge, describe, escape, new_graph
from triptych.diagrams.graph import LayerGraph, shape_text
from triptych.diagrams.xception import backbone
from triptych.errors import TriptychError

# A colour per source, so that the edges leaving one feature map can be followed.
PALETTE = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
           "#1f78b4", "#b2182b")


@dataclass(frozen=True)
class DenseLayer:
    index: int
    layers: tuple[str, ...]  # convB_blockI_* without the concat
    entry: str  # its first layer (the one reading the concatenation)
    output: str  # the layer whose k feature maps it adds
    sources: tuple[str, ...]  # what the concatenation it reads is made of, in channel order


def dense_blocks(graph: LayerGraph) -> list[int]:
    """Numbers B of the dense blocks (layers named ``convB_blockI_concat``)."""
    return sorted({int(m.group(1)) for n in graph.order if (m := re.match(r"^conv(\d+)_block\d+_concat$", n))})


def dense_layers(graph: LayerGraph, block: int) -> list[DenseLayer]:
    found = []
    index = 1
    while f"conv{block}_block{index}_concat" in graph:
        concat = f"conv{block}_block{index}_concat"
        members = [n.name for n in graph.with_prefix(f"conv{block}_block{index}_") if n.name != concat]
        inside = set(members)
        (entry,) = [n for n in members if not any(p in inside for p in graph[n].parents)]
        (output,) = [p for p in graph[concat].parents if p in inside]
        found.append(DenseLayer(index, tuple(members), entry, output, tuple(graph.sources(entry))))
        index += 1
    return found


def draw_dense_block(model, block: int | None = None) -> Diagram:
    """Dense block ``block`` (default: the first) and the layer after it (the transition)."""
    base = backbone(model)
    graph = LayerGraph(base)
    blocks = dense_blocks(graph)
    if not blocks:
        raise TriptychError(f"{model.name} has no convB_blockI_concat layers: not a DenseNet")
    block = block if block is not None else blocks[0]
    if block not in blocks:
        raise TriptychError(f"{model.name} has no dense block {block}; dense blocks: {', '.join(map(str, blocks))}")
    layers = dense_layers(graph, block)
    last_concat = f"conv{block}_block{len(layers)}_concat"
    block_input = layers[0].sources[0]
    c0 = graph[block_input].channels
    growth = sorted({graph[layer.output].channels for layer in layers})
    k = growth[0] if len(growth) == 1 else None
    n = len(layers)
    c_out = graph[last_concat].channels
    title = (
        f"{model.name}: dense block {block} (conv{block}_*) and what follows it, drawn from the built model\n"
        f"each of its {n} layers receives the concatenation of all earlier feature maps: "
        f"{n}·{n + 1}/2 = {n * (n + 1) // 2} connections;\n"
        + (f"growth rate k = {k}: {c0} channels in, {c0} + {n}·{k} = {c_out} out" if k else f"{c0} → {c_out} channels")
        + f", at {shape_text(graph[block_input].output_shape[:-1])}"
    )
    dot = new_graph(f"{model.name}_dense_block{block}", title, rankdir="LR", nodesep="0.5", ranksep="0.55",
                    fontsize="16")
    diagram = Diagram(f"{model.name} dense block {block}", dot)
    node_of: dict[str, str] = {block_input: "x0"}
    color_of: dict[str, str] = {block_input: PALETTE[0]}

    dot.node("x0", f"<<B>x<SUB>0</SUB></B> block input<BR/>{shape_text(graph[block_input].output_shape)}<BR/>"
             f'<FONT POINT-SIZE="9">{escape(block_input)}</FONT>>', shape="box3d", style="filled", margin="0.2,0.1",
             fillcolor=COLORS["tensor"], color=PALETTE[0], penwidth="2", group="row")

    def connect(sources: tuple[str, ...], target: str, kind: str) -> None:
        for source in sources:
            if source not in node_of:
                raise TriptychError(f"{target}: input {source} is not part of dense block {block}")
            color = color_of[source]
            # The edge to the next layer keeps the row straight; skip edges bend around it.
            adjacent = source == sources[-1]
            dot.edge(node_of[source], target, color=color, penwidth="1.4", arrowsize="0.6",
                     weight="20" if adjacent else "1")
            diagram.edges.append(Edge(node_of[source], target, kind, str(graph[source].channels)))

    with dot.subgraph(name=f"cluster_block{block}") as cluster:
        cluster.attr(label=f"dense block {block}: {n} layers", fontsize="14", style="rounded", color="#999999")
        for layer in layers:
            node_id = f"H{layer.index}"
            c_in = graph[layer.entry].input_shapes[0][-1]
            widths = [graph[s].channels for s in layer.sources]
            if len(widths) > 3 and len(set(widths[1:])) == 1:
                parts = f"{widths[0]} + {len(widths) - 1}·{widths[1]}"
            else:
                parts = " + ".join(map(str, widths))
            ops = _ops_lines(graph, layer.layers)
            color = PALETTE[layer.index % len(PALETTE)]
            cluster.node(node_id, f"<<B>H<SUB>{layer.index}</SUB></B> conv{block}_block{layer.index}<BR/>{ops}"
                         f'<BR/><FONT POINT-SIZE="10">in: {escape(parts) + " = " if len(widths) > 1 else ""}'
                         f"{c_in} ch<BR/>out: +{graph[layer.output].channels} ch</FONT>>",
                         color=color, penwidth="2", group="row")
            connect(layer.sources, node_id, "dense")
            node_of[layer.output] = node_id
            color_of[layer.output] = color

    # What reads the whole block: the transition layer (poolB_*), or the final BN at the end.
    after = [c for c in graph.consumers[last_concat]]
    if after:
        start = after[0]
        chain = [start]
        while len(graph.consumers[chain[-1]]) == 1 and graph[chain[-1]].class_name != "AveragePooling2D":
            nxt = graph.consumers[chain[-1]][0]
            if graph[nxt].class_name in ("Concatenate", "InputLayer") or re.match(r"^conv\d+_block\d+_", nxt):
                break
            chain.append(nxt)
        is_transition = any(graph[c].class_name == "AveragePooling2D" for c in chain)
        name = f"transition ({start.split('_')[0]}_*)" if is_transition else "after the last block"
        ops = _ops_lines(graph, chain)
        end_shape = shape_text(graph[chain[-1]].output_shape)
        dot.node("T", f"<<B>{escape(name)}</B><BR/>{ops}<BR/>"
                 f'<FONT POINT-SIZE="10">{shape_text(graph[last_concat].output_shape)} → {end_shape}</FONT>>',
                 fillcolor=COLORS["pool"], penwidth="2", group="row")
        connect(tuple(graph.sources(start)), "T", "transition")
        consumers = graph.consumers[chain[-1]]
        if consumers:
            nxt = consumers[0]
            match = re.match(r"^(conv\d+_block\d+)_", nxt)
            dot.node("next", f"to {match.group(1) if match else nxt}", shape="plaintext", style="")
            dot.edge("T", "next", label=f" {end_shape} ")
            diagram.edges.append(Edge("T", "next", "main", end_shape))
        diagram.facts["transition"] = {"layers": chain, "is_transition": is_transition,
                                       "output_shape": graph[chain[-1]].output_shape}

    diagram.facts.update({
        "block": block,
        "layers": n,
        "growth_rate": k,
        "input_channels": c0,
        "output_channels": c_out,
        "concat_layers": [f"conv{block}_block{i}_concat" for i in range(1, n + 1)],
        "sources": {f"H{layer.index}": list(layer.sources) for layer in layers},
        "blocks": blocks,
    })
    return diagram


def _ops_lines(graph: LayerGraph, names) -> str:
    """``BN · ReLU · 1×1 conv, 128`` lines: a new line after each convolution or pool."""
    lines, current = [], []
    for name in names:
        current.append(describe(graph[name]))
        if graph[name].class_name not in AUXILIARY:
            lines.append(" · ".join(current))
            current = []
    if current:
        lines.append(" · ".join(current))
    return "<BR/>".join(escape(line) for line in lines)
