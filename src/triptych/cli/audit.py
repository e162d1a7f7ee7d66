"""``triptych audit DIR``: check an image folder for files that break or bias training."""

from __future__ import annotations

import argparse

from triptych.cli import add_command_parser

DESCRIPTION = """\
Open and fully decode every image under DIR (one subfolder per class, or train/ and test/
folders of class subfolders) and report: images per class; unreadable, empty or truncated
files; decompression bombs (header only, never decoded); CMYK, greyscale and alpha images;
tiny images; exact duplicates (same bytes) and near duplicates (perceptual hash), also across
splits; and how many images carry black padding borders.

It is a report: the exit code is 0 even when problems are found.
"""

EPILOG = """\
examples:
  triptych audit ../shared/datasets/wikiart
  triptych audit ../shared/datasets/wikiart --json > audit.json
  triptych audit data/art --out runs/art/audit.json --splits runs/art/xception/split.csv
"""


def register(subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    # No triptych.data import here: building the parser must stay cheap for every command.
    parser = add_command_parser(subparsers, name, summary, DESCRIPTION, EPILOG)
    parser.add_argument("dir", metavar="DIR", help="image folder with one subfolder per class")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON instead of a summary")
    parser.add_argument("--out", metavar="FILE", help="also write the full JSON report to FILE")
    parser.add_argument(
        "--splits",
        metavar="CSV",
        help="a run's split.csv (columns split,id): also list duplicates that cross its splits",
    )
    parser.add_argument(
        "--near-threshold",
        type=int,
        default=None,
        metavar="BITS",
        help="near duplicates: at most this many of the 256 perceptual-hash bits differ "
        "(default 64; 0 = identical hashes only)",
    )
    parser.add_argument(
        "--min-side",
        type=int,
        default=None,
        metavar="PX",
        help="report images narrower or lower than this many pixels (default 32)",
    )
    parser.add_argument(
        "--cache",
        metavar="FILE",
        help="keep image hashes in FILE (JSON) so the next audit of unchanged files skips decoding",
    )
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: up to 4)")
    parser.add_argument(
        "--examples", type=int, default=5, metavar="N", help="example paths shown per problem (default 5)"
    )
    return parser


def execute(args: argparse.Namespace) -> int:
    # Imported here, not at the top: building the parser must stay cheap for every command.
    from triptych.data.audit import (
        DEFAULT_MIN_SIDE,
        DEFAULT_NEAR_THRESHOLD,
        audit_folder,
        format_report,
        read_split_csv,
        report_json,
        write_report,
    )

    report = audit_folder(
        args.dir,
        splits=read_split_csv(args.splits) if args.splits else None,
        near_threshold=DEFAULT_NEAR_THRESHOLD if args.near_threshold is None else args.near_threshold,
        min_side=DEFAULT_MIN_SIDE if args.min_side is None else args.min_side,
        workers=args.workers,
        cache_file=args.cache,
    )
    if args.out:
        write_report(report, args.out)
    print(report_json(report) if args.json else format_report(report, args.examples))
    if args.out and not args.json:
        print(f"full report: {args.out}")
    return 0
