"""``triptych data wikiart``: fetch a dataset into a class-per-subfolder image folder."""

from __future__ import annotations

import argparse
import sys

from triptych.cli import add_command_parser

DESCRIPTION = """\
Fetch a dataset into an image folder that 'triptych run' can train on (data.folder in a config).

datasets:
  wikiart   paintings of chosen styles from the WikiArt dataset on the Hugging Face hub
"""

WIKIART_DESCRIPTION = """\
Stream the WikiArt dataset (huggan/wikiart on the Hugging Face hub: 81,444 paintings labelled
with 27 styles) and write OUT/<style>/<sha1>.jpg until each requested style has N images,
plus OUT/manifest.csv (file, style, artist, genre, sha1). Needs 'pip install datasets'.

Rerunning the same command resumes: files already written are kept and skipped (their rows
are streamed again, the hub cannot seek). Without network, pass --parquet with local copies
of the dataset's parquet files (same columns: image, artist, genre, style).
"""

WIKIART_EPILOG = """\
examples:
  triptych data wikiart --styles Romanticism Expressionism Post_Impressionism --per-class 1500 --out data/wikiart
  triptych data wikiart --per-class 200 --out data/wikiart-small --parquet shards/train-0000*.parquet
"""


def register(subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    parser = add_command_parser(subparsers, name, summary, DESCRIPTION)
    datasets = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    wikiart = datasets.add_parser(
        "wikiart",
        help="WikiArt paintings of chosen styles (huggan/wikiart)",
        description=WIKIART_DESCRIPTION,
        epilog=WIKIART_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    wikiart.add_argument(
        "--styles",
        nargs="+",
        default=["Romanticism", "Expressionism", "Post_Impressionism"],
        metavar="STYLE",
        help="style names as in the dataset (default: Romanticism Expressionism Post_Impressionism); "
        "case, spaces and hyphens do not matter",
    )
    wikiart.add_argument("--per-class", type=int, required=True, metavar="N", help="images per style")
    wikiart.add_argument("--out", required=True, metavar="DIR", help="output folder (one subfolder per style)")
    wikiart.add_argument("--source", default="huggan/wikiart", help="dataset id on the hub (default huggan/wikiart)")
    wikiart.add_argument("--split", default="train", help="dataset split (default train)")
    wikiart.add_argument(
        "--parquet",
        nargs="+",
        action="extend",
        metavar="FILE",
        help="read these local parquet files (or folders, or globs) instead of the hub",
    )
    return parser


def execute(args: argparse.Namespace) -> int:
    if args.dataset == "wikiart":
        # Imported here, not at the top: building the parser must stay cheap for every command.
        from triptych.data.wikiart import fetch_wikiart

        result = fetch_wikiart(
            args.out,
            args.styles,
            args.per_class,
            source=args.source,
            parquet=args.parquet,
            split=args.split,
        )
        counts = ", ".join(f"{name} {count:,}" for name, count in result.counts.items())
        print(f"{result.out}: {counts} ({result.written:,} new, {result.present:,} already there"
              + (f", {result.bad:,} undecodable source images skipped" if result.bad else "") + ")")
        if result.short:
            print(
                f"warning: {result.source} ran out before {args.per_class:,} images of "
                + ", ".join(f"{name} (got {n:,})" for name, n in result.short.items()),
                file=sys.stderr,
            )
        return 0
    raise AssertionError(f"unknown dataset {args.dataset!r}")
