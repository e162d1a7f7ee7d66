"""The child's side of :mod:`triptych.isolation`: ``python -m triptych.experiment_process``.

Reads one request (the experiment as JSON, the output folder, seed, resume, threads) on stdin,
runs it with :func:`triptych.runner.run_experiment_here`, and hands a user mistake back to the
parent through the request's result file (exception type and message), so that the parent can
raise the same exception: one line, as if the experiment had run in the parent.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported (by the runner)

from triptych import errors  # noqa: E402
from triptych.config import ExperimentConfig  # noqa: E402
from triptych.isolation import EXIT_INTERRUPTED, EXIT_USER_ERROR  # noqa: E402
from triptych.runner import run_experiment_here  # noqa: E402


def main() -> int:
    text = sys.stdin.read()  # a process started ahead of its experiment waits here
    if not text:
        return 0  # the parent ended without an experiment for this process
    request = json.loads(text)
    exp = ExperimentConfig.model_validate(request["experiment"])
    try:
        run_experiment_here(
            exp, Path(request["out"]), seed=request["seed"], resume=request["resume"], threads=request["threads"],
            sent=request.get("sent"),
        )
    except errors.TriptychError as err:
        kind = type(err).__name__ if hasattr(errors, type(err).__name__) else "TriptychError"
        Path(request["result_file"]).write_text(json.dumps({"kind": kind, "message": str(err)}), encoding="utf-8")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


def exit_now(code: int) -> None:
    """End the process without the interpreter's teardown: with TensorFlow loaded it takes ~3.5 s
    (measured on 2 cores after a Keras fit), and the parent waits for it before the next experiment.
    Nothing is lost by skipping it: the run's files are written (and closed) atomically before main
    returns, and the child's output is flushed here."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
