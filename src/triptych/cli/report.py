"""``triptych report DIR [DIR ...] [--out FILE]``: rebuild report.html from saved runs.

Each DIR is an experiment directory or an output directory holding experiment directories.
Imports nothing from TensorFlow, so it works on a machine without it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from triptych.errors import TriptychError

DEFAULT_NAME = "report.html"


def register(subparsers: argparse._SubParsersAction, name: str, summary: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=(
            "Build one self-contained HTML report (tables, figures, McNemar tests) from saved run "
            "directories. Each DIR is an experiment directory (with manifest.json) or an output "
            "directory holding experiment directories. Unfinished experiments are listed, not read."
        ),
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="experiment or output directory")
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help=f"HTML file to write (default: DIR/{DEFAULT_NAME}; required with several DIRs)")
    parser.add_argument("--title", default="triptych report", help="heading of the report (default: %(default)s)")
    return parser


def execute(args: argparse.Namespace) -> int:
    out = args.out or _default_out(args.dirs)
    # Imported here so that `triptych --help` and argument errors do not load matplotlib and scikit-learn.
    from triptych.reporting import build_report

    written = build_report(args.dirs, out, title=args.title)
    print(written)
    return 0


def _default_out(dirs: list[Path]) -> Path:
    if len(dirs) != 1:
        raise TriptychError("--out FILE is required when several DIRs are given")
    if not dirs[0].is_dir():
        raise TriptychError(f"{dirs[0]}: not a directory")
    return dirs[0] / DEFAULT_NAME
