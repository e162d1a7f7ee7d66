"""DenseNet: one dense block, in which every layer receives the feature maps of all earlier
layers, followed by its transition layer, read from the nested ``base`` model.

keras.applications builds the "concatenation of all earlier outputs" as a chain
(``convB_blockI_concat = concat(convB_block{I-1}_concat, convB_blockI_2_conv)``); opening the
chain up gives each layer's real sources, so the diagram draws one edge per source: a block of
L layers has L(L+1)/2 of them, and the transition one more per layer plus the block input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from triptych.diagrams.core import AUXILIARY, COLORS, Diagram, Edge, describe, escape, new_graph
from triptych.diagrams.graph import LayerGraph, LayerNode, shape_text
from triptych.diagrams.xception import backbone
from triptych.errors import InvalidArgumentError

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
    graph = LayerGraph(backbone(model))
    blocks = dense_blocks(graph)
    if not blocks:
        raise InvalidArgumentError(f"{model.name} has no convB_blockI_concat layers: not a DenseNet")
    block = block if block is not None else blocks[0]
    if block not in blocks:
        raise InvalidArgumentError(f"{model.name} has no dense block {block}; dense blocks: {', '.join(map(str, blocks))}")
    layers = dense_layers(graph, block)
    block_input = layers[0].sources[0]
    last_concat = f"conv{block}_block{len(layers)}_concat"
    growth = sorted({graph[layer.output].channels for layer in layers})
    k = growth[0] if len(growth) == 1 else None
    title = _title(model.name, block, len(layers), k, graph[block_input], graph[last_concat].channels)
    dot = new_graph(f"{model.name}_dense_block{block}", title, rankdir="LR", nodesep="0.5", ranksep="0.55",
                    fontsize="16")
    drawing = _DenseDrawing(graph, Diagram(f"{model.name} dense block {block}", dot), block)
    drawing.input_node(block_input)
    drawing.layers(layers)
    drawing.after_block(last_concat)
    drawing.diagram.facts.update({
        "block": block,
        "layers": len(layers),
        "growth_rate": k,
        "input_channels": graph[block_input].channels,
        "output_channels": graph[last_concat].channels,
        "concat_layers": [f"conv{block}_block{i}_concat" for i in range(1, len(layers) + 1)],
        "sources": {f"H{layer.index}": list(layer.sources) for layer in layers},
        "blocks": blocks,
    })
    return drawing.diagram


def _title(model_name: str, block: int, n: int, k: int | None, block_input: LayerNode, c_out: int) -> str:
    c0 = block_input.channels
    return (
        f"{model_name}: dense block {block} (conv{block}_*) and what follows it, drawn from the built model\n"
        f"each of its {n} layers receives the concatenation of all earlier feature maps: "
        f"{n}·{n + 1}/2 = {n * (n + 1) // 2} connections;\n"
        + (f"growth rate k = {k}: {c0} channels in, {c0} + {n}·{k} = {c_out} out" if k else f"{c0} → {c_out} channels")
        + f", at {shape_text(block_input.output_shape[:-1])}"
    )


@dataclass
class _DenseDrawing:
    """A dense block being drawn: which node shows each feature map, in which colour."""

    graph: LayerGraph
    diagram: Diagram
    block: int
    node_of: dict[str, str] = field(default_factory=dict)
    color_of: dict[str, str] = field(default_factory=dict)

    @property
    def dot(self):
        return self.diagram.graph

    def input_node(self, block_input: str) -> None:
        self.node_of[block_input], self.color_of[block_input] = "x0", PALETTE[0]
        self.dot.node("x0", f"<<B>x<SUB>0</SUB></B> block input<BR/>{shape_text(self.graph[block_input].output_shape)}"
                      f'<BR/><FONT POINT-SIZE="9">{escape(block_input)}</FONT>>', shape="box3d", style="filled",
                      margin="0.2,0.1", fillcolor=COLORS["tensor"], color=PALETTE[0], penwidth="2", group="row")

    def connect(self, sources: tuple[str, ...], target: str, kind: str) -> None:
        for source in sources:
            if source not in self.node_of:
                raise InvalidArgumentError(f"{target}: input {source} is not part of dense block {self.block}")
            # The edge to the next layer keeps the row straight; skip edges bend around it.
            adjacent = source == sources[-1]
            self.dot.edge(self.node_of[source], target, color=self.color_of[source], penwidth="1.4", arrowsize="0.6",
                          weight="20" if adjacent else "1")
            self.diagram.edges.append(Edge(self.node_of[source], target, kind, str(self.graph[source].channels)))

    def layers(self, layers: list[DenseLayer]) -> None:
        """One node per layer H_i, fed by every earlier feature map."""
        with self.dot.subgraph(name=f"cluster_block{self.block}") as cluster:
            cluster.attr(label=f"dense block {self.block}: {len(layers)} layers", fontsize="14", style="rounded",
                         color="#999999")
            for layer in layers:
                node_id, color = f"H{layer.index}", PALETTE[layer.index % len(PALETTE)]
                cluster.node(node_id, self._layer_label(layer), color=color, penwidth="2", group="row")
                self.connect(layer.sources, node_id, "dense")
                self.node_of[layer.output], self.color_of[layer.output] = node_id, color

    def _layer_label(self, layer: DenseLayer) -> str:
        graph = self.graph
        c_in = graph[layer.entry].input_shapes[0][-1]
        widths = [graph[s].channels for s in layer.sources]
        if len(widths) > 3 and len(set(widths[1:])) == 1:
            parts = f"{widths[0]} + {len(widths) - 1}·{widths[1]}"
        else:
            parts = " + ".join(map(str, widths))
        return (f"<<B>H<SUB>{layer.index}</SUB></B> conv{self.block}_block{layer.index}<BR/>"
                f"{_ops_lines(graph, layer.layers)}"
                f'<BR/><FONT POINT-SIZE="10">in: {escape(parts) + " = " if len(widths) > 1 else ""}'
                f"{c_in} ch<BR/>out: +{graph[layer.output].channels} ch</FONT>>")

    def after_block(self, last_concat: str) -> None:
        """What reads the whole block: the transition layer (poolB_*), or the final BN at the end."""
        graph = self.graph
        after = list(graph.consumers[last_concat])
        if not after:
            return
        start = after[0]
        chain = _chain_after(graph, start)
        is_transition = any(graph[c].class_name == "AveragePooling2D" for c in chain)
        name = f"transition ({start.split('_')[0]}_*)" if is_transition else "after the last block"
        end_shape = shape_text(graph[chain[-1]].output_shape)
        self.dot.node("T", f"<<B>{escape(name)}</B><BR/>{_ops_lines(graph, chain)}<BR/>"
                      f'<FONT POINT-SIZE="10">{shape_text(graph[last_concat].output_shape)} → {end_shape}</FONT>>',
                      fillcolor=COLORS["pool"], penwidth="2", group="row")
        self.connect(tuple(graph.sources(start)), "T", "transition")
        consumers = graph.consumers[chain[-1]]
        if consumers:
            match = re.match(r"^(conv\d+_block\d+)_", consumers[0])
            self.dot.node("next", f"to {match.group(1) if match else consumers[0]}", shape="plaintext", style="")
            self.dot.edge("T", "next", label=f" {end_shape} ")
            self.diagram.edges.append(Edge("T", "next", "main", end_shape))
        self.diagram.facts["transition"] = {"layers": chain, "is_transition": is_transition,
                                            "output_shape": graph[chain[-1]].output_shape}


def _chain_after(graph: LayerGraph, start: str) -> list[str]:
    """``start`` and the single-consumer layers after it, up to its average pool or the next block."""
    chain = [start]
    while len(graph.consumers[chain[-1]]) == 1 and graph[chain[-1]].class_name != "AveragePooling2D":
        nxt = graph.consumers[chain[-1]][0]
        if graph[nxt].class_name in ("Concatenate", "InputLayer") or re.match(r"^conv\d+_block\d+_", nxt):
            break
        chain.append(nxt)
    return chain


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
