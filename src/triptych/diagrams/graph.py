"""A read-only view of a Keras functional graph: which layer feeds which, with shapes.

Built from the model's own nodes (``model._nodes_by_depth``, falling back to every layer's
``_inbound_nodes``: :func:`triptych.models.profile.model_nodes`), so the diagrams are drawn from the real graph and stay true for any
depth, width or input size. Each tensor is traced back through ``KerasTensor._keras_history``,
which keeps the order of a layer's inputs (``Add([shortcut, residual])``) and repeats.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from triptych.models.profile import model_nodes


@dataclass(frozen=True)
class LayerNode:
    """One layer call in the graph."""

    name: str
    class_name: str
    layer: Any = field(repr=False, compare=False)
    parents: tuple[str, ...]  # names of the layers whose outputs this call consumes, in order
    input_shapes: tuple[tuple, ...]
    output_shape: tuple

    @property
    def channels(self) -> int:
        return int(self.output_shape[-1])


class LayerGraph:
    """Layers of one functional model (not recursing into nested models), in topological order."""

    def __init__(self, model: Any):
        self.model = model
        self.nodes: dict[str, LayerNode] = {}
        for node in model_nodes(model):
            operation = node.operation
            if operation.name in self.nodes:  # a shared layer: keep its first call
                continue
            parents = tuple(t._keras_history.operation.name for t in node.input_tensors)
            self.nodes[operation.name] = LayerNode(
                name=operation.name,
                class_name=operation.__class__.__name__,
                layer=operation,
                parents=parents,
                input_shapes=tuple(tuple(t.shape) for t in node.input_tensors),
                output_shape=tuple(node.output_tensors[0].shape),
            )
        order = {layer.name: i for i, layer in enumerate(model.layers)}
        self.order = sorted(self.nodes, key=lambda name: order.get(name, len(order)))
        self.consumers: dict[str, list[str]] = defaultdict(list)
        for name in self.order:
            for parent in self.nodes[name].parents:
                self.consumers[parent].append(name)

    def __getitem__(self, name: str) -> LayerNode:
        return self.nodes[name]

    def __contains__(self, name: str) -> bool:
        return name in self.nodes

    def with_prefix(self, prefix: str) -> list[LayerNode]:
        return [self.nodes[n] for n in self.order if n.startswith(prefix)]

    def of_class(self, *class_names: str) -> list[LayerNode]:
        return [self.nodes[n] for n in self.order if self.nodes[n].class_name in class_names]

    def sources(self, name: str, through: tuple[str, ...] = ("Concatenate",)) -> list[str]:
        """The layers whose outputs reach ``name``'s input once the ``through`` layers
        (e.g. chained concatenations) are opened up, in channel order."""
        found: list[str] = []
        for parent in self.nodes[name].parents:
            if self.nodes[parent].class_name in through:
                found.extend(self.sources(parent, through))
            else:
                found.append(parent)
        return found


def shape_text(shape: tuple) -> str:
    """``(None, 56, 56, 256)`` -> ``56×56×256``."""
    dims = [str(d) for d in shape if d is not None]
    return "×".join(dims)
