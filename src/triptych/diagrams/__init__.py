"""Diagrams of each architecture's key idea, generated from the built Keras model.

Nothing is drawn by hand: every box, edge and shape is read from the model's functional
graph, so the drawings stay true for any depth, width or input size a user configures.

* ResNet: a projection-shortcut block and an identity-shortcut block (basic blocks for
  resnet18/34, bottlenecks for resnet50+), shapes on the edges.
* Xception: the entry / middle / exit flow, and one depthwise separable convolution opened up
  with its parameter and multiply-add counts against an ordinary convolution.
* DenseNet: a dense block (every layer fed by all earlier ones) and its transition layer.

``draw(model_name, out)`` writes ``out.svg`` and ``out.png`` (and, for Xception,
``out_separable.svg/.png``). Each ``draw_*`` function returns a :class:`Diagram` whose
``edges`` and ``facts`` tests compare with the model's graph.

The drawing needs nothing outside pip: Graphviz's ``dot`` renders it where installed, else
graphviz-pure, a dependency of triptych (render.py decides).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from triptych.diagrams.core import Diagram, Edge
from triptych.diagrams.densenet import draw_dense_block
from triptych.diagrams.resnet import draw_resnet
from triptych.diagrams.xception import draw_separable_conv, draw_xception_flows
from triptych.errors import InvalidArgumentError
from triptych.models.registry import build, get_spec

__all__ = [
    "Diagram",
    "Edge",
    "diagrams_for",
    "draw",
    "draw_dense_block",
    "draw_resnet",
    "draw_separable_conv",
    "draw_xception_flows",
]

DIAGRAM_CLASSES = 10  # the head does not appear in any drawing


def diagrams_for(model: Any, family: str) -> dict[str, Diagram]:
    """The diagrams of a built model of registry family ``family``, by file-name suffix
    (``""`` for the main drawing)."""
    if family == "resnet":
        return {"": draw_resnet(model)}
    if family == "xception":
        return {"": draw_xception_flows(model), "_separable": draw_separable_conv(model)}
    if family == "densenet":
        return {"": draw_dense_block(model)}
    raise InvalidArgumentError(f"no diagram for model family {family!r} (resnet, xception and densenet have one)")


def draw(
    model_name: str,
    out: str | Path,
    *,
    input_shape: tuple[int, int, int] | None = None,
    **build_options: Any,
) -> list[Path]:
    """Build ``model_name`` from the registry (random weights) and draw its key idea.

    Writes ``out`` as ``.svg`` and ``.png`` (Xception: also ``<out>_separable.svg/.png``) and
    returns the paths written. ``build_options`` go to :func:`triptych.models.build`
    (e.g. ``stem="cifar"`` for a ResNet).
    """
    spec = get_spec(model_name)  # an unknown name is a one-line error listing the valid ones
    out = Path(out)
    if out.suffix.lower() not in ("", ".svg", ".png"):
        raise InvalidArgumentError(f"{out}: the diagram is written as .svg and .png; name it FILE.svg")
    model = build(model_name, DIAGRAM_CLASSES, input_shape, None, **build_options)
    written: list[Path] = []
    for suffix, diagram in diagrams_for(model, spec.family).items():
        target = out.with_name(out.stem + suffix + ".svg") if out.suffix else out.with_name(out.name + suffix + ".svg")
        written.extend(diagram.render(target))
    return written
