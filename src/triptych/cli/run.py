"""``triptych run CONFIG --out DIR``: train and evaluate every experiment, then write the report."""

from __future__ import annotations

import argparse

from triptych.cli import add_command_parser
from triptych.config import load_config
from triptych.errors import TriptychError
from triptych.io import storage_error
from triptych.isolation import ExperimentProcesses
from triptych.preflight import check_budget, runs_in_one_process, validate_experiments

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
  triptych run configs/demo.yaml --out runs/demo --budget 10m   # epochs chosen to fit 10 minutes

every config key, with its type, default and meaning: triptych config --schema

environment:
  TRIPTYCH_MIRROR  folder holding offline datasets (e.g. ../shared/datasets with cifar10/train, cifar10/test)
"""


def register(subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    parser = add_command_parser(subparsers, name, summary, DESCRIPTION, EPILOG)
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
    parser.add_argument(
        "--budget", default=None, metavar="DURATION",
        help="wall time for the whole config, e.g. 90s, 10m, 1h30m (overrides the config's time_budget): shared "
        "out over the experiments (each share becomes its training.time_budget); a measured warm-up chooses the "
        "epochs that fit, the configured epochs are upper limits",
    )
    parser.add_argument("--no-report", action="store_true", help="skip writing DIR/report.html")
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N",
        help="TensorFlow intra-op threads (inter-op: 2); default: TensorFlow's choice (all cores)",
    )
    parser.add_argument(
        "--track", choices=["none", "mlflow"], default=None,
        help="send each experiment to a tracking server (same as --set tracking=mlflow; needs pip install -e .[mlflow]); "
        "MLFLOW_TRACKING_URI, else a local store in DIR/mlruns",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out image files that cannot be used (truncated, not an image, decompression bomb, ...) and list "
        "them in each manifest.json, instead of stopping before training (same as --set data.skip_bad=true)",
    )
    return parser


def execute(args: argparse.Namespace) -> int:
    overrides = [*args.overrides, *(["data.skip_bad=true"] if args.skip_bad else [])]
    config = load_config(args.config, overrides)
    validate_experiments(config)  # before TensorFlow loads, so that a config mistake is refused at once
    check_budget(config, args.budget)
    with ExperimentProcesses(args.threads) as processes:
        # The first experiment's process imports TensorFlow while this one does (~6 s each, on two cores).
        if not runs_in_one_process(config):
            processes.start_next()
        from triptych.runner import RunOptions, run_config  # loads TensorFlow

        options = RunOptions(
            resume=args.resume, overwrite=args.overwrite, report=not args.no_report, threads=args.threads,
            track=args.track, budget=args.budget,
        )
        try:
            run_config(config, args.out, options, processes=processes)
        except OSError as err:
            message = storage_error(err, args.out)
            if message is None:
                raise
            raise TriptychError(message) from err
    return 0


# The library names its Python arguments; cli/main.py puts this command's flags in their place.
FLAGS = {"resume": "--resume", "overwrite": "--overwrite", "threads": "--threads", "track": "--track",
         "budget": "--budget"}
