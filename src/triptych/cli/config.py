"""``triptych config --schema`` (every key) and ``triptych config FILE`` (a config, resolved and commented)."""

from __future__ import annotations

import argparse
import sys

from triptych.cli import add_command_parser

DESCRIPTION = """\
--schema: list every config key with its type, default and description, read from the same
pydantic models that validate configs. FILE: validate a config and print it resolved (every
default filled in, --set applied), every key commented.
"""

EPILOG = """\
examples:
  triptych config --schema
  triptych config configs/demo.yaml
  triptych config configs/demo.yaml --set training.epochs=1 > quick.yaml
"""


def register(subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    parser = add_command_parser(subparsers, name, summary, DESCRIPTION, EPILOG)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--schema", action="store_true", help="list every key: type, default, description")
    what.add_argument("file", nargs="?", metavar="FILE", help="a YAML config to validate and print resolved")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a value in every experiment, e.g. training.epochs=2 (repeatable)",
    )
    return parser


def execute(args: argparse.Namespace) -> int:
    from triptych.config import load_config
    from triptych.config_schema import commented_yaml, config_keys, format_schema

    if args.schema:
        print(format_schema(config_keys()))
    else:
        sys.stdout.write(commented_yaml(load_config(args.file, args.overrides)))
    return 0
