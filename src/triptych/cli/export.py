"""``triptych export RUN_DIR_OR_MODEL --format savedmodel|onnx|tflite --out PATH``."""

from __future__ import annotations

import argparse

from triptych.cli import add_command_parser

# The Python arguments of export (named in its errors) and this command's flags for them.
FLAGS = {"fmt": "--format", "quantize": "--quantize", "samples": "--samples", "overwrite": "--overwrite",
         "preprocessing": "--preprocessing"}

DESCRIPTION = """\
Export a trained model to a TensorFlow SavedModel, ONNX, or TFLite (optionally quantised to
float16 or int8), then check it: the export and the Keras model are run on the same sample
inputs (real test images from the run's predictions.csv when readable, else random images)
and compared. A float32 export must agree to 1e-4 or nothing is written and the exit code
is 2; quantised exports report their parity. The export takes preprocessed float32 images
like the Keras model; a .json sidecar (triptych.json inside a SavedModel) names the class
names, input size and preprocessing. ONNX needs tf2onnx and onnxruntime.
"""

EPILOG = """\
examples:
  triptych export runs/demo/resnet18 --format onnx --out exports/resnet18.onnx
  triptych export runs/demo/resnet18 --format savedmodel --out exports/resnet18_savedmodel
  triptych export runs/demo/resnet18 --format tflite --quantize int8 --out exports/resnet18_int8.tflite
"""


def register(subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    parser = add_command_parser(subparsers, name, summary, DESCRIPTION, EPILOG)
    parser.add_argument("model", metavar="RUN_DIR_OR_MODEL", help="run directory (with model.keras) or a .keras file")
    parser.add_argument("--format", required=True, choices=("savedmodel", "onnx", "tflite"), help="export format")
    parser.add_argument("--out", required=True, metavar="PATH", help="file (onnx, tflite) or folder (savedmodel) to write")
    parser.add_argument("--quantize", choices=("float16", "int8"), help="TFLite only: quantise weights (float16) or weights and activations (int8)")
    parser.add_argument("--samples", type=int, default=16, metavar="N", help="inputs for the parity check (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing PATH")
    parser.add_argument("--preprocessing", choices=("torch", "tf", "caffe", "none"), help="input normalisation for a bare .keras file")
    return parser


def execute(args: argparse.Namespace) -> int:
    from triptych.inference.exporting import export

    result = export(
        args.model,
        args.format,
        args.out,
        quantize=args.quantize,
        samples=args.samples,
        overwrite=args.overwrite,
        preprocessing=args.preprocessing,
    )
    kind = args.format + (f" ({args.quantize})" if args.quantize else "")
    print(f"exported {kind} to {result.path} ({result.size_bytes / 1e6:.1f} MB) in {result.seconds:.1f} s")
    print(result.parity.line())
    if args.quantize:
        print("(quantised: parity is reported, not enforced; float32 exports must agree to 1e-4)")
    print(f"metadata: {result.metadata}")
    return 0
