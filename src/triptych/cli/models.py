"""``triptych models [NAME ...] [--json] [--measure]``: the registry with each model's numbers."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from triptych.cli import add_command_parser
from triptych.errors import TriptychError

DESCRIPTION = """\
List the models triptych can build: family, native input size, the preprocessing it is fed,
and where ImageNet weights come from (keras.applications; "mirror" when $TRIPTYCH_WEIGHTS has
the file). Nothing is built for the plain list.

Name models (or pass --measure) for numbers measured from the built model: parameters (total
and trainable), GMACs (multiply-adds per image, counted layer by layer from the graph; 1 MAC =
2 FLOPs), and weights size. Models are built with random weights (nothing is downloaded) and, by
default, a 1000-class head so that the numbers compare with published ones. --measure adds
latency (batch 1, median of 5 runs after warm-up) and throughput (batch 32) on this machine: slow
on a CPU at native input sizes, many minutes for the whole registry.
"""

EPILOG = """\
examples:
  triptych models
  triptych models --json
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
    from triptych.models.profile import load_cards
    from triptych.models.registry import get_spec, list_models

    specs = [get_spec(name) for name in args.names] if args.names else list_models()  # a typo fails first
    if args.num_classes < 2:
        raise TriptychError(f"--num-classes must be at least 2, got {args.num_classes}")
    input_shape = parse_input_size(args.input_size)
    cards = load_cards()
    built = bool(args.names or args.measure)
    if args.input_size and not built:
        raise TriptychError("--input-size sets the size of the models that are built: name them, or add --measure")
    rows = _profiles(specs, input_shape, args) if built else [catalog_row(spec) for spec in specs]
    if args.json:
        for row in rows:
            row["card"] = cards["families"].get(row["family"], {})
        print(json.dumps({"models": rows, "card_label": cards.get("label"), "published": cards.get("published", {})},
                         indent=2))
        return 0
    if built:
        _print_table(rows, args.measure)
    else:
        _print_catalog(rows)
    if args.cards:
        _print_cards(rows, cards)
    return 0


def catalog_row(spec) -> dict[str, Any]:
    """What the registry says about a model, without building it."""
    from triptych.models.weights import find_imagenet_file

    imagenet = "no"
    if spec.pretrained:
        imagenet = "mirror" if find_imagenet_file(spec, spec.default_input_shape) else "download"
    return {
        "model": spec.name,
        "family": spec.family,
        "input_shape": list(spec.default_input_shape),
        "preprocessing": spec.preprocessing,
        "imagenet_preprocessing": spec.preprocessing_for("imagenet") if spec.pretrained else None,
        "imagenet_weights": imagenet,
        "keras_application": spec.application if spec.keras_backbone else None,  # None: triptych's own
        "description": spec.description,
    }


def _profiles(specs, input_shape, args: argparse.Namespace) -> list[dict[str, Any]]:
    from triptych.models.profile import profile_model

    profiles = []
    for spec in specs:
        _progress(f"profiling {spec.name}{' (measuring speed)' if args.measure else ''} ...")
        profiles.append(profile_model(spec.name, input_shape, measure=args.measure, num_classes=args.num_classes))
    _progress("")
    return profiles


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


def _print_catalog(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="triptych models", title_justify="left")
    for column in ("model", "family", "input", "preprocessing", "ImageNet weights", "keras.applications"):
        table.add_column(column, no_wrap=column in ("model", "family"))
    for row in rows:
        preprocessing = row["preprocessing"]
        if row["imagenet_preprocessing"] not in (None, preprocessing):
            preprocessing += f" (imagenet: {row['imagenet_preprocessing']})"
        table.add_row(row["model"], row["family"], "×".join(str(d) for d in row["input_shape"][:2]), preprocessing,
                      row["imagenet_weights"], row["keras_application"] or "(from scratch)")
    console = Console(width=max(120, Console().width))
    console.print(table)
    console.print("name models (or add --measure) for parameters, GMACs and weights size, measured from the built "
                  "model; ImageNet weights: 'mirror' = found under $TRIPTYCH_WEIGHTS", style="dim")


def _print_cards(profiles: list[dict[str, Any]], cards: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console()
    if cards.get("label"):
        console.print(f"\n[bold]model cards[/bold] ({cards['label']})")
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
