"""Each experiment of a config in its own child process.

Why: TensorFlow keeps graphs, thread pools, the dtype policy and freed-but-held memory for the
life of a process, so an experiment run after another inherits its state, and a process-wide
peak memory (``ru_maxrss``) would credit every later experiment with the earlier ones' peaks.
A child per experiment makes the peak memory in its manifest its own, and a crash in one
experiment cannot leave the next one in a half-configured TensorFlow.

The parent sends the experiment as JSON on the child's stdin (:mod:`triptych.experiment_process`
is the child's side); the child's output goes straight
to the parent's stdout/stderr (the user sees Keras's progress live); a user mistake in the child
comes back as the same exception type and message (one line), a bug as its traceback followed
by one line naming the experiment. ``--resume`` works unchanged: the child resumes from the run
directory exactly as an in-process run would.

A config of several experiments runs them through :class:`ExperimentProcesses`, which starts the
next experiment's process while the current one runs: the new process spends its first seconds
importing TensorFlow and Keras (~6 s on 2 cores, single-threaded), which then overlap the running
experiment instead of adding to the config's wall time. It waits, idle, for its request.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from triptych import errors
from triptych.config import ExperimentConfig
from triptych.errors import TriptychError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class ExperimentCrashed(TriptychError, RuntimeError):
    """An experiment's child process died of a bug or a signal (its traceback, if any, is above)."""


class ExperimentProcesses:
    """Runs experiments one at a time, each in a fresh process; with ``next_one=True`` :meth:`run`
    also starts the process the next experiment will use, so that its imports overlap this one.
    A context manager: leaving it stops a started process no experiment used (it has only imported)."""

    def __init__(self, threads: int | None = None):
        self.threads = threads
        self._spare: subprocess.Popen | None = None

    def __enter__(self) -> ExperimentProcesses:
        return self

    def __exit__(self, *exc) -> None:
        if self._spare is not None:
            self._spare.kill()
            self._spare.wait()
            self._spare = None

    def start_next(self) -> None:
        """Start the process the next :meth:`run` will use, now (e.g. before the caller imports TensorFlow
        itself: the two imports then share the cores). Stopped on leaving the context if no run uses it."""
        if self._spare is None:
            self._spare = _start_child()

    def run(self, exp: ExperimentConfig, out: Path, *, seed: int, resume: bool, next_one: bool = False) -> Path:
        """Run ``exp`` in the waiting process (or a new one); its run directory."""
        process, self._spare = self._spare or _start_child(), None
        with tempfile.TemporaryDirectory(prefix="triptych-child-") as tmp:
            result_file = Path(tmp) / "result.json"
            request = {
                "experiment": exp.model_dump(mode="json"),
                "out": str(out),
                "seed": seed,
                "resume": resume,
                "threads": self.threads,
                "result_file": str(result_file),
                "sent": time.time(),  # where a waiting process's time budget starts counting
            }
            if next_one:
                self.start_next()
            code = _serve(process, json.dumps(request))
            if code == 0:
                return Path(out) / exp.name
            _raise_child_failure(exp.name, code, result_file)
        raise AssertionError("unreachable")  # _raise_child_failure always raises


# What TensorFlow prints on stderr while it is imported, whatever TF_CPP_MIN_LOG_LEVEL says:
# every experiment process would repeat it in the user's log.
_STARTUP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [\d:.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on)"
)


def _start_child() -> subprocess.Popen:
    """A new experiment process: it imports, then waits for its request on stdin."""
    # Unbuffered, so that the child's log lines reach a piped parent output as they happen.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "triptych.experiment_process"],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _serve(process: subprocess.Popen, request: str) -> int:
    """Hand ``process`` its request, relay its stderr, wait for it to end; its exit code."""
    relay = threading.Thread(target=_relay_stderr, args=(process.stderr,), daemon=True)
    relay.start()
    try:
        process.stdin.write(request)
        process.stdin.close()
        process.wait()
    except KeyboardInterrupt:
        # Ctrl-C reaches the whole process group: let the child save what it can, then stop too.
        process.wait()
        raise
    finally:
        relay.join(timeout=5)
    return process.returncode


def _relay_stderr(stream) -> None:
    """The child's stderr, live, less TensorFlow's import-time noise."""
    for line in stream:
        if not _STARTUP_NOISE.match(line):
            sys.stderr.write(line)
            sys.stderr.flush()


def _raise_child_failure(name: str, code: int, result_file: Path) -> None:
    if code == EXIT_INTERRUPTED:
        raise KeyboardInterrupt
    if result_file.exists():
        result = json.loads(result_file.read_text(encoding="utf-8"))
        kind = getattr(errors, result["kind"], TriptychError)
        raise kind(result["message"])
    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    raise ExperimentCrashed(f"experiment {name} stopped ({how}); its traceback, if any, is above")
