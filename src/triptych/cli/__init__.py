"""Command-line interface: a thin layer over the Python API (one module per sub-command)."""

import argparse


def add_command_parser(
    subparsers, name: str, summary: str, description: str, epilog: str | None = None
) -> argparse.ArgumentParser:
    """The sub-command's parser, with its help text laid out as written (one place for all commands)."""
    return subparsers.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
