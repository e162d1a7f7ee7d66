"""``triptych compare FOLDER --models a,b --out DIR``: your own images, several models, one command."""

from __future__ import annotations

import argparse

from triptych.cli import add_command_parser

DESCRIPTION = """\
Compare models on your own image folder (one subfolder of images per class) in one command:
audit the folder (class counts, imbalance, unreadable files, duplicates), pick a recipe per
model (its native input size; two-phase fine-tuning for backbones with ImageNet weights, from
scratch otherwise), write the config to DIR/config.yaml (to repeat or edit the run), train and
evaluate every model, and write DIR/report.html.

Refused before anything trains: a folder without images, fewer than 2 classes, or a class
with fewer than 10 usable images. Unreadable images are skipped and listed; near duplicates
that land in val/test are dropped, so no test image is also a training image.
"""

EPILOG = """\
examples:
  triptych compare ../shared/datasets/wikiart --models xception,resnet18 --budget 5m --out runs/c
  triptych compare photos/ --models xception,densenet121,resnet50 --budget 2h --out runs/photos
  triptych compare photos/ --out runs/photos --track mlflow      # also log to MLflow
  triptych init photos/ --budget 20m > my.yaml                    # the same config, without running it

--budget sizes the recipe (image size, images per class, epochs) to finish in about that long
on a small CPU machine; without it every image is used at the models' native sizes.
"""


def register(subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    parser = add_command_parser(subparsers, name, summary, DESCRIPTION, EPILOG)
    add_recipe_arguments(parser)
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output directory (config.yaml, one subdirectory per model, report.html)"
    )
    parser.add_argument(
        "--track", choices=["none", "mlflow"], default=None,
        help="log each experiment to MLflow too (pip install 'triptych[mlflow]'; MLFLOW_TRACKING_URI, else DIR/mlruns)",
    )
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="continue an interrupted comparison in DIR")
    existing.add_argument("--overwrite", action="store_true", help="delete an existing run directory DIR first")
    return parser


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments ``compare`` and ``init`` share: what to compare, on what, how big."""
    parser.add_argument("folder", metavar="FOLDER", help="image folder, one subfolder per class (or train/ and test/ of those)")
    parser.add_argument(
        "--models", default="xception,densenet121,resnet50",
        help="comma-separated model names (triptych models lists them); default: %(default)s",
    )
    parser.add_argument("--budget", default=None, metavar="TIME", help="about how long to spend, e.g. 90s, 20m, 2h")
    parser.add_argument("--seed", type=int, default=0, help="seed for splits, initialisation and augmentation (default 0)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a value of the recipe in every experiment, e.g. training.epochs=2 (repeatable)",
    )


def execute(args: argparse.Namespace) -> int:
    from triptych.compare import compare_folder

    compare_folder(
        args.folder, args.models, args.out, budget=args.budget, track=args.track, seed=args.seed,
        overrides=args.overrides, resume=args.resume, overwrite=args.overwrite,
    )
    return 0
