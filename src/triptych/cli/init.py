"""``triptych init FOLDER > my.yaml``: the config ``triptych compare`` would run, every key commented."""

from __future__ import annotations

import argparse
import sys

from triptych.cli import add_command_parser
from triptych.cli.compare import add_recipe_arguments

DESCRIPTION = """\
Audit an image folder and print the config that 'triptych compare' would run on it, as YAML
with every key commented (and the audit's findings on top), without training anything. Edit
it, then run it with 'triptych run my.yaml --out DIR'.
"""

EPILOG = """\
examples:
  triptych init photos/ > my.yaml
  triptych init photos/ --models xception,resnet18 --budget 20m > my.yaml
  triptych run my.yaml --out runs/mine
"""


def register(subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    parser = add_command_parser(subparsers, name, summary, DESCRIPTION, EPILOG)
    add_recipe_arguments(parser)
    return parser


def execute(args: argparse.Namespace) -> int:
    from triptych.compare import check_folder, folder_notes, parse_budget, parse_models, recipe_for_folder, recipe_yaml

    models = parse_models(args.models)
    parse_budget(args.budget)
    report = check_folder(args.folder)
    for note in folder_notes(report):
        print(note, file=sys.stderr)  # stdout is the YAML
    config = recipe_for_folder(
        args.folder, models, budget=args.budget, seed=args.seed, overrides=args.overrides, audit=report
    )
    sys.stdout.write(recipe_yaml(config, report, args.budget))
    return 0
