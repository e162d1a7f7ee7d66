"""ResNet: a projection-shortcut block followed by an identity-shortcut block, read from the graph.

Every ``stageS_blockB_add`` layer has two inputs. Walking each back to the layer outside the
block gives the residual path (the convolutions) and the shortcut: either nothing (the
identity, the block input itself) or a 1x1 projection conv + BN when the shape changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from triptych.diagrams.core import COLORS, Diagram, Edge, escape, group_label, group_path, new_graph
from triptych.diagrams.graph import LayerGraph, shape_text
from triptych.errors import InvalidArgumentError

BLOCK_RE = re.compile(r"^(stage(\d+)_block(\d+))_")


@dataclass(frozen=True)
class ResidualBlock:
    prefix: str
    input: str  # the layer outside the block whose output enters it
    add: str
    output: str  # the block's last layer (the ReLU after the add)
    main_path: tuple[str, ...]  # input -> ... -> add, block layers only
    shortcut_path: tuple[str, ...]  # () for the identity shortcut
    main_convs: int  # convolutions on the residual path: 2 (basic block) or 3 (bottleneck)

    @property
    def shortcut(self) -> str:
        return "projection" if self.shortcut_path else "identity"


def residual_blocks(graph: LayerGraph) -> list[ResidualBlock]:
    """Every residual block of a triptych ResNet, in order."""
    prefixes: list[str] = []
    for name in graph.order:
        match = BLOCK_RE.match(name)
        if match and match.group(1) not in prefixes:
            prefixes.append(match.group(1))
    return [residual_block(graph, prefix) for prefix in prefixes]


def residual_block(graph: LayerGraph, prefix: str) -> ResidualBlock:
    members = {n.name for n in graph.with_prefix(prefix + "_")}
    adds = [n for n in members if graph[n].class_name == "Add"]
    if len(adds) != 1:
        raise InvalidArgumentError(f"{prefix}: expected one Add layer in a residual block, found {len(adds)}")
    add = adds[0]
    paths, inputs = [], set()
    for parent in graph[add].parents:
        path: list[str] = []
        while parent in members:
            path.append(parent)
            (parent,) = graph[parent].parents  # residual paths are linear
        inputs.add(parent)
        paths.append(tuple(reversed(path)))
    if len(inputs) != 1:
        raise InvalidArgumentError(f"{prefix}: the two paths into {add} start from different layers {sorted(inputs)}")
    main, shortcut = sorted(paths, key=len, reverse=True)
    (output,) = [n for n in graph.consumers[add] if n in members] or [add]
    convs = sum(1 for n in main if graph[n].class_name == "Conv2D")
    return ResidualBlock(prefix, inputs.pop(), add, output, main, shortcut, convs)


def draw_resnet(model, stage: int = 2) -> Diagram:
    """The first projection-shortcut block and the first identity-shortcut block of ``stage``
    (in a real ResNet: ``stageS_block1`` downsampling, then ``stageS_block2``), as they are in
    the model, with the tensor shape on every edge."""
    graph = LayerGraph(model)
    blocks = residual_blocks(graph)
    if not blocks:
        raise InvalidArgumentError(f"{model.name} has no stageS_blockB_ layers: not a triptych ResNet")
    chosen = _first_of_each_shortcut(model.name, blocks, stage)
    convs = max(b.main_convs for b in blocks)
    block_kind = "bottleneck" if convs >= 3 else "basic"
    n_proj = sum(b.shortcut == "projection" for b in blocks)
    title = (
        f"{model.name}: {block_kind} residual blocks (stage {stage}, drawn from the built model)\n"
        f"{len(blocks)} blocks in all: {n_proj} with a projection shortcut, {len(blocks) - n_proj} with the identity"
    )
    drawing = _ResNetDrawing(graph, Diagram(f"{model.name} residual blocks", new_graph(f"{model.name}_blocks", title)))
    for block in chosen:
        drawing.block(block)
    drawing.next_after(chosen[-1].output)
    drawing.diagram.facts = {
        "block_kind": block_kind,
        "stage": stage,
        "blocks_drawn": [b.prefix for b in chosen],
        "shortcuts": {b.prefix: b.shortcut for b in chosen},
        "adds": [b.add for b in chosen],
        "num_blocks": len(blocks),
        "num_projection": n_proj,
        "num_identity": len(blocks) - n_proj,
    }
    return drawing.diagram


def _first_of_each_shortcut(model_name: str, blocks: list[ResidualBlock], stage: int) -> list[ResidualBlock]:
    """The first projection-shortcut and the first identity-shortcut block of ``stage``, in model order."""
    in_stage = [b for b in blocks if b.prefix.startswith(f"stage{stage}_")]
    if not in_stage:
        stages = sorted({int(BLOCK_RE.match(b.prefix + "_").group(2)) for b in blocks})
        raise InvalidArgumentError(f"{model_name} has no stage {stage}; stages: {', '.join(map(str, stages))}")
    chosen = [b for kind in ("projection", "identity") for b in [next((x for x in in_stage if x.shortcut == kind), None)] if b]
    chosen.sort(key=lambda b: blocks.index(b))
    return chosen


@dataclass
class _ResNetDrawing:
    """Residual blocks being drawn; ``drawn`` maps a layer to the node (box) that shows it."""

    graph: LayerGraph
    diagram: Diagram
    drawn: dict[str, str] = field(default_factory=dict)

    @property
    def dot(self):
        return self.diagram.graph

    def node_for(self, layer: str) -> str:
        if layer not in self.drawn:
            self.drawn[layer] = layer
            self.dot.node(layer, f"<<B>{escape(layer)}</B><BR/>{shape_text(self.graph[layer].output_shape)}>",
                          shape="ellipse", style="filled", fillcolor=COLORS["tensor"])
        return self.drawn[layer]

    def edge(self, src_layer: str, dst_node: str, kind: str, label: str | None = None) -> None:
        src = self.node_for(src_layer)
        text = label or shape_text(self.graph[src_layer].output_shape)
        attrs = {"label": f" {text} "}
        if kind == "shortcut":
            attrs.update(color=COLORS["shortcut"], fontcolor=COLORS["shortcut"], penwidth="2.2")
        self.dot.edge(src, dst_node, **attrs)
        self.diagram.edges.append(Edge(src, dst_node, kind, text))

    def block(self, block: ResidualBlock) -> None:
        """One block as a cluster: its residual path and its shortcut, meeting at the add."""
        graph = self.graph
        self.node_for(block.input)
        with self.dot.subgraph(name=f"cluster_{block.prefix}") as cluster:
            what = "identity shortcut" if block.shortcut == "identity" else "projection shortcut"
            cluster.attr(label=f"{block.prefix}: {what}", labeljust="l", fontsize="14", style="rounded", color="#999999")
            add_id = f"{block.prefix}__add"
            cluster.node(add_id, group_label(graph, [block.add, block.output], "add, then ReLU"),
                         fillcolor=COLORS["add"])
            for kind, path in (("main", block.main_path), ("shortcut", block.shortcut_path)):
                previous = block.input
                for group in group_path(graph, list(path)):
                    node_id = group[-1]
                    cluster.node(node_id, group_label(graph, group),
                                 fillcolor=COLORS["conv"] if kind == "main" else "#fbe3d1")
                    self.edge(previous, node_id, kind)
                    for name in group:
                        self.drawn[name] = node_id
                    previous = group[-1]
                self.edge(previous, add_id, kind, None if path or kind == "main" else
                          f"identity {shape_text(graph[block.input].output_shape)}")
            for name in (block.add, block.output):
                self.drawn[name] = add_id

    def next_after(self, last: str) -> None:
        """Where the last drawn block's output goes next."""
        for consumer in self.graph.consumers[last][:1]:
            match = BLOCK_RE.match(consumer)
            self.dot.node("__next", f"to {match.group(1) if match else consumer}", shape="plaintext", style="")
            self.edge(last, "__next", "main")
