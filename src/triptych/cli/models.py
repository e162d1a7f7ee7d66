"""``triptych models [NAME ...] [--json] [--measure]``: the registry with each model's numbers."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from triptych.cli import add_command_parser
from triptych.errors import TriptychError

DESCRIPTION = """\
List the models triptych can build, with numbers measured from the built model: input size,
parameters (total and trainable), GMACs (multiply-adds per image, counted layer by layer from
the graph; 1 MAC = 2 FLOPs), and weights size. Models are built with random weights (nothing is
downloaded) and, by default, a 1000-class head so that the numbers compare with published ones.

--measure adds latency (batch 1, median of 5 runs after warm-up) and throughput (batch 32) on
this machine. It is slow on a CPU at native input sizes: minutes for the whole registry.
"""

EPILOG = """\
examples:
  triptych models
  triptych models resnet50 densenet121 --json
  triptych models xception --measure --input-size 160
  triptych models --cards
"""


def register(subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    parser = add_command_parser(subparsers, name, summary, DESCRIPTION, EPILOG)
    parser.add_argument("names", nargs="*", metavar="MODEL", help="registry names (default: all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--measure", action="store_true", help="also measure latency and throughput (slow)")
    parser.add_argument("--input-size", metavar="SIZE", help="input size for every model, e.g. 160 or 160x160 "
                        "(default: each model's native size)")
    parser.add_argument("--num-classes", type=int, default=1000, metavar="N",
                        help="classes of the head (default: %(default)s, ImageNet's)")
    parser.add_argument("--cards", action="store_true",
                        help="also print each family's card: key idea, pros, cons, best use (from cards.yaml)")
    return parser


def parse_input_size(text: str | None) -> tuple[int, int, int] | None:
    """``160`` / ``160x160`` / ``160x160x3`` -> ``(160, 160, 3)``."""
    if not text:
        return None
    parts = text.lower().replace("×", "x").split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise TriptychError(f"input size {text!r}: expected e.g. 224 or 224x224") from None
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) == 2:
        dims.append(3)
    if len(dims) != 3 or dims[2] != 3 or min(dims) < 1:
        raise TriptychError(f"input size {text!r}: expected HEIGHTxWIDTH (3 channels), e.g. 224x224")
    return tuple(dims)


def execute(args: argparse.Namespace) -> int:
    from triptych.models.profile import load_cards, profile_model
    from triptych.models.registry import get_spec, list_models

    names = args.names or [spec.name for spec in list_models()]
    for name in names:
        get_spec(name)  # fail on a typo before building anything
    if args.num_classes < 2:
        raise TriptychError(f"--num-classes must be at least 2, got {args.num_classes}")
    input_shape = parse_input_size(args.input_size)
    cards = load_cards()

    profiles = []
    for name in names:
        _progress(f"profiling {name}{' (measuring speed)' if args.measure else ''} ...")
        profiles.append(profile_model(name, input_shape, measure=args.measure, num_classes=args.num_classes))
    _progress("")

    if args.json:
        for profile in profiles:
            profile["card"] = cards["families"].get(profile["family"], {})
        print(json.dumps({"models": profiles, "published": cards.get("published", {})}, indent=2))
        return 0
    _print_table(profiles, args.measure)
    if args.cards:
        _print_cards(profiles, cards)
    return 0


def _progress(message: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + message)
        sys.stderr.flush()


def _print_table(profiles: list[dict[str, Any]], measure: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="triptych models", title_justify="left")
    columns = ["model", "family", "input", "params", "trainable", "GMACs", "weights MB"]
    if measure:
        columns += ["latency ms", "img/s"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "family", "input") else "right")
    for p in profiles:
        row = [
            p["model"],
            p["family"],
            "×".join(str(d) for d in p["input_shape"][:2]),
            f"{p['params'] / 1e6:.2f} M",
            f"{p['trainable_params'] / 1e6:.2f} M",
            f"{p['gmacs']:.2f}",
            f"{p['weights_mb']:.1f}",
        ]
        if measure:
            row += [f"{p['latency_ms']:.1f}", f"{p['throughput_img_s']:.1f}"]
        table.add_row(*row)
    console = Console(width=max(100, Console().width))
    console.print(table)
    notes = [f"parameters with a {profiles[0]['num_classes']}-class head; GMACs = multiply-adds per image "
             "(conv + dense layers, from the graph; 1 MAC = 2 FLOPs); weights MB = 2^20 bytes"]
    if measure:
        notes.append(f"latency: batch 1, median of 5 runs; throughput: batch {profiles[0]['batch_size']}; "
                     f"on this machine: {profiles[0]['device']}")
    for note in notes:
        console.print(note, style="dim")


def _print_cards(profiles: list[dict[str, Any]], cards: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console()
    seen = set()
    for p in profiles:
        family = p["family"]
        if family in seen:
            continue
        seen.add(family)
        card = cards["families"][family]
        console.print(f"\n[bold]{family}[/bold]: {card['architecture']}")
        console.print(f"  key idea: {card['key_innovation']}")
        console.print("  pros: " + "; ".join(card["pros"]))
        console.print("  cons: " + "; ".join(card["cons"]))
        console.print(f"  best use: {card['best_use_case']}")
    published = cards.get("published")
    if published:
        results = ", ".join(f"{k} {v:.2f}" for k, v in published["results"].items())
        console.print(f"\n[bold]{published['label']}[/bold] ({published['source']}; {published['task']}, "
                      f"{published['test_images']:,} test images, {published['metric']}): {results}")
