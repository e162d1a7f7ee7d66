"""``triptych explain RUN_DIR [IMAGE...] --out DIR``: Grad-CAM heat maps over images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from triptych.cli import add_command_parser
from triptych.errors import InvalidArgumentError

# The Python arguments of explain / gradcam_for_run (named in their errors) and this command's flags.
FLAGS = {"n": "--mistakes", "out_dir": "--out", "class_name": "--class", "layer": "--layer",
         "batch_size": "--batch-size", "preprocessing": "--preprocessing"}

DESCRIPTION = """\
Show where a trained model looks: a Grad-CAM heat map of its last convolutional stage
(ResNets: the last stage4 block; Xception / DenseNet-121: the backbone's output), laid over
each image and written as DIR/<image>_gradcam.png. The map is for the predicted class,
or for --class.

Without IMAGE, explains the run's most confident mistakes from predictions.csv (--mistakes N)
and writes them to RUN_DIR/gradcam/ (or --out) with gradcam.json listing them.
"""

EPILOG = """\
examples:
  triptych explain runs/demo/resnet18 cat.jpg photos/ --out heatmaps/
  triptych explain runs/demo/densenet121 cat.jpg --out heatmaps/ --class dog
  triptych explain runs/demo/resnet18 --mistakes 8
"""


def register(subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    parser = add_command_parser(subparsers, name, summary, DESCRIPTION, EPILOG)
    parser.add_argument("model", metavar="RUN_DIR", help="run directory (or a .keras file, with IMAGE)")
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image file or folder (recursive)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="folder for the PNG overlays (default with no IMAGE: RUN_DIR/gradcam)")
    parser.add_argument("--class", dest="class_name", metavar="LABEL", help="explain this class instead of the predicted one")
    parser.add_argument("--layer", metavar="NAME", help="explain this layer instead of the last convolutional stage")
    parser.add_argument("--mistakes", type=int, default=4, metavar="N", help="without IMAGE: how many mistakes (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per pass (default: %(default)s)")
    parser.add_argument("--preprocessing", choices=("torch", "tf", "caffe", "none"), help="input normalisation for a bare .keras file")
    return parser


def execute(args: argparse.Namespace) -> int:
    from triptych.inference.gradcam import explain, gradcam_for_run

    if not args.images:
        if args.class_name:  # two API functions: only explain() takes a class
            raise InvalidArgumentError("--class needs IMAGE arguments (mistakes are explained for their predicted class)")
        chosen = gradcam_for_run(args.model, n=args.mistakes, out_dir=args.out, layer=args.layer)
        if not chosen:
            print("no mistakes with a readable image in predictions.csv: nothing to explain")
        for path, true, pred, prob, png in chosen:
            print(f"{path}: true {true}, predicted {pred} ({prob:.1%}) -> {png}")
        return 0
    explained, skipped = explain(
        args.model,
        args.images,
        args.out,
        layer=args.layer,
        class_name=args.class_name,
        batch_size=args.batch_size,
        preprocessing=args.preprocessing,
    )
    for path, reason in skipped:
        print(f"triptych explain: skipped {path}: {reason}", file=sys.stderr)
    for item in explained:
        target = "" if item["explained"] == item["label"] else f", map for {item['explained']}"
        print(f"{item['path']}: {item['label']} ({item['probability']:.1%}{target}) -> {item['overlay']}")
    print(f"Grad-CAM of layer {explained[0]['layer']}, {len(explained)} overlay(s) in {args.out}")
    return 0
