"""``triptych run CONFIG --out DIR``: train and evaluate every experiment, then write the report."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Train and evaluate every experiment in a YAML config. Each experiment gets DIR/<name>/ with
config.yaml, manifest.json, history.csv, model.keras, predictions.csv and metrics.json;
DIR/report.html compares them all.

A killed run loses at most the current epoch: rerun the same command with --resume.
"""

EPILOG = """\
examples:
  triptych run configs/demo.yaml --out runs/demo
  triptych run configs/cifar10.yaml --out runs/c10 --set training.epochs=30 --set data.batch_size=128
  triptych run configs/cifar10.yaml --out runs/c10 --resume

environment:
  TRIPTYCH_MIRROR  folder holding offline datasets (e.g. ../shared/datasets with cifar10/train, cifar10/test)
"""


def register(subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML file with 'experiments' (see configs/)")
    parser.add_argument("--out", required=True, help="output directory (one subdirectory per experiment)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value in every experiment, e.g. training.epochs=2 (repeatable); "
        "top-level keys such as seed=3 apply once",
    )
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="continue unfinished experiments in DIR, skip finished ones")
    existing.add_argument("--overwrite", action="store_true", help="delete an existing run directory DIR first")
    parser.add_argument("--no-report", action="store_true", help="skip writing DIR/report.html")
    return parser


def execute(args: argparse.Namespace) -> int:
    from triptych.config import load_config
    from triptych.runner import RunOptions, run_config

    config = load_config(args.config, args.overrides)
    run_config(config, args.out, RunOptions(resume=args.resume, overwrite=args.overwrite, report=not args.no_report))
    return 0
