"""``triptych`` entry point: parses arguments, dispatches to a sub-command, turns user errors
into one line on stderr and a non-zero exit code."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

from triptych import __version__
from triptych.errors import TriptychError

# Each sub-command lives in triptych.cli.<name> and exposes
# ``register(subparsers) -> argparse.ArgumentParser`` and ``execute(args) -> int``, and may
# map the Python arguments named in library errors to its flags: ``FLAGS = {"top_k": "--top-k"}``.
# Modules are imported lazily so that ``triptych report`` never pays for TensorFlow.
COMMANDS: dict[str, str] = {
    "compare": "Compare models on your own image folder in one command: audit, recipe, train, report.",
    "init": "Print the config 'compare' would run on a folder, every key commented (then edit, then 'run').",
    "run": "Train and evaluate every experiment of a YAML config, then write the report.",
    "report": "Build report.html from saved run directories (no retraining, no TensorFlow).",
    "models": "List the models with parameters, GMACs, weights size (and, with --measure, speed).",
    "diagram": "Draw an architecture's key idea (SVG + PNG) from the built model.",
    "audit": "Check an image folder: unreadable, odd or tiny images, duplicates, leaks across splits.",
    "data": "Fetch a dataset into an image folder (triptych data wikiart: styles from the Hugging Face hub).",
    "predict": "Predict the classes of image files and folders with a trained model.",
    "explain": "Grad-CAM heat maps: where a trained model looks in an image.",
    "export": "Export a trained model to SavedModel, ONNX or TFLite, with a parity check.",
    "config": "List every config key (--schema), or print a config resolved and commented.",
}

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a killed writer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triptych",
        description=(
            "Train, fine-tune and compare image classifiers side by side "
            "(ResNet from scratch, Xception and DenseNet-121 fine-tuned), and report honestly "
            "which one is better and why."
        ),
        epilog="Run 'triptych COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"triptych {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in COMMANDS.items():
        module = _command_module(name)
        sub = module.register(subparsers, name, summary)
        sub.set_defaults(_execute=module.execute, _flags=getattr(module, "FLAGS", {}))
    return parser


def _command_module(name: str):
    return importlib.import_module(f"triptych.cli.{name.replace('-', '_')}")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter off the terminal
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_execute", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        code = int(args._execute(args) or 0)
        sys.stdout.flush()  # a closed pipe surfaces here, inside the handler below, not at interpreter exit
        return code
    except TriptychError as err:
        print(f"triptych {args.command}: error: {with_flags(str(err), args._flags)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"triptych {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``triptych models | head``): stop quietly, as Unix tools do. Point
        # stdout at /dev/null so that Python's flush at exit does not raise a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def with_flags(message: str, flags: dict[str, str]) -> str:
    """A library message in the command's terms: the Python argument it is about
    (``top_k must be at least 1``) and ``name=value`` hints (``pass overwrite=True``,
    ``fmt=tflite``) become the command's flags (``--top-k``, ``--overwrite``, ``--format tflite``)."""
    for name, flag in flags.items():
        name = re.escape(name)
        message = re.sub(rf"^{name}(?= (?:must|is|applies|needs)\b)", flag, message)
        message = re.sub(rf"(?<![\w./-]){name}=True\b", flag, message)  # not inside a path
        message = re.sub(rf"(?<![\w./-]){name}=", flag + " ", message)
    return message


if __name__ == "__main__":
    raise SystemExit(main())
