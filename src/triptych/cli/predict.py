"""``triptych predict RUN_DIR_OR_MODEL PATH...``: top-k classes of image files and folders."""

from __future__ import annotations

import argparse
import sys

from triptych.cli import add_command_parser

# The Python arguments of predict_files (named in its errors) and this command's flags for them.
FLAGS = {"top_k": "--top-k", "batch_size": "--batch-size", "fmt": "--format", "preprocessing": "--preprocessing"}

DESCRIPTION = """\
Predict the classes of images with a trained model. PATH is an image file or a folder
(searched recursively for .jpg .jpeg .png .bmp .gif). Images are resized and normalised
exactly as in training, using the run's manifest.json (model name, class names).

A bare .keras file takes its class names from a manifest.json / metrics.json beside it
(else class_0, class_1, ...) and its preprocessing from that manifest's model name (else
pass --preprocessing). Models load in Keras safe mode: a model with a Lambda layer is refused.
Images that cannot be decoded are reported on stderr and skipped; the exit code is 2 if
none could be read.
"""

EPILOG = """\
examples:
  triptych predict runs/demo/resnet18 cat.jpg dog.png
  triptych predict runs/demo/resnet18 photos/ --top-k 1 --format csv > predictions.csv
  triptych predict model.keras photos/ --preprocessing torch --format json
"""


def register(subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    parser = add_command_parser(subparsers, name, summary, DESCRIPTION, EPILOG)
    parser.add_argument("model", metavar="RUN_DIR_OR_MODEL", help="run directory (with model.keras) or a .keras file")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image file or folder (recursive)")
    parser.add_argument("--top-k", type=int, default=3, metavar="K", help="classes shown per image (default: %(default)s)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per forward pass (default: %(default)s)")
    parser.add_argument(
        "--preprocessing",
        choices=("torch", "tf", "caffe", "none"),
        help="input normalisation, when the model file has no manifest naming its architecture",
    )
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show a progress bar")
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")
    return parser


def execute(args: argparse.Namespace) -> int:
    from triptych.inference.prediction import format_results, predict_files

    def report(failure) -> None:
        print(f"triptych predict: skipped {failure.path}: {failure.reason}", file=sys.stderr)

    results, _ = predict_files(
        args.model,
        args.paths,
        args.top_k,
        batch_size=args.batch_size,
        preprocessing=args.preprocessing,
        progress=args.progress,
        on_failure=report,
    )
    sys.stdout.write(format_results(results, args.format))
    return 0
