"""``triptych diagram MODEL --out FILE.svg``: draw an architecture's key idea from the built model."""

from __future__ import annotations

import argparse

import yaml

from triptych.cli import add_command_parser
from triptych.cli.models import parse_input_size
from triptych.diagrams import draw  # no TensorFlow until a model is built
from triptych.errors import InvalidArgumentError
from triptych.models.registry import get_spec

DESCRIPTION = """\
Draw the key idea of an architecture from its built Keras model (random weights, nothing is
downloaded), so the drawing is true for the depth, width and input size you choose:

  resnet18/34     a basic block with a projection shortcut, then one with the identity shortcut
  resnet50+       the same with bottleneck blocks
  xception        entry / middle / exit flow, plus FILE_separable.svg: one depthwise separable
                  convolution opened up, with its parameters and multiply-adds next to an
                  ordinary 3x3 convolution's
  densenet121     the first dense block (every layer fed by all earlier ones) and its transition

Writes FILE.svg and FILE.png beside it, with Graphviz's 'dot' where it is installed, else with
graphviz-pure (installed with triptych).
"""

EPILOG = """\
examples:
  triptych diagram resnet50 --out figures/resnet50.svg
  triptych diagram resnet18 --out figures/resnet18_cifar.svg --input-size 32 --option stem=cifar
  triptych diagram xception --out figures/xception.svg
  triptych diagram densenet121 --out figures/densenet121.svg --input-size 160
"""


def register(subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    parser = add_command_parser(subparsers, name, summary, DESCRIPTION, EPILOG)
    parser.add_argument("model", metavar="MODEL", help="registry name (see 'triptych models')")
    parser.add_argument("--out", required=True, metavar="FILE.svg", help="SVG to write; the PNG goes beside it")
    parser.add_argument("--input-size", metavar="SIZE", help="e.g. 160 or 160x160 (default: the model's native size)")
    parser.add_argument("--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
                        help="build option of the model, e.g. stem=cifar for a ResNet (repeatable)")
    return parser


def execute(args: argparse.Namespace) -> int:
    get_spec(args.model)  # an unknown name fails here, in one line, before TensorFlow loads
    input_shape = parse_input_size(args.input_size)
    options = _parse_options(args.options)
    for path in draw(args.model, args.out, input_shape=input_shape, **options):
        print(path)
    return 0


def _parse_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidArgumentError(f"--option {item!r}: expected KEY=VALUE, e.g. stem=cifar")
        options[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return options
