"""``training.precision: auto`` (the default): bf16 where it is measured faster on this machine.

bfloat16 pays off only where the hardware computes in it: on a CPU, oneDNN's AVX512-BF16 and
AMX kernels; elsewhere oneDNN converts to float32 and back, and bf16 is slower (0.74x fp32 on an
AVX2-only AMD EPYC, against 1.4-1.7x on a Xeon with AMX). The CPU flags alone do not settle it
(ARM CPUs, VMs that hide flags, ``ONEDNN_MAX_CPU_ISA``, which kernels oneDNN picks for a shape),
so on a CPU auto *measures*: a few training steps of a small ResNet-like net under each policy,
in alternating rounds, and bf16 only when its median step is at least :data:`BF16_MARGIN`
times faster. The flags are reported beside the measurement, never instead of it.

A GPU is not measured (a net sized for a CPU would time kernel launches, not arithmetic): bf16
from compute capability 8.0 (Ampere: bfloat16 tensor cores), fp16 on 7.x (Volta, Turing:
float16 tensor cores, with loss scaling), fp32 before.

The choice is measured once per machine and remembered in ``$TRIPTYCH_CACHE/precision-auto.json``
under a key of everything it depends on (CPU model and flags, ``ONEDNN_MAX_CPU_ISA``,
``TF_ENABLE_ONEDNN_OPTS``, TensorFlow and Keras versions, GPUs): ``ONEDNN_MAX_CPU_ISA=AVX2``
is a different machine, measured on its own. Delete the file to measure again (e.g. after a
measurement on a busy machine). :func:`resolve_precision` returns the choice with its reason,
for the run's manifest and report.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import triptych
from triptych.cache import cache_dir
from triptych.errors import InvalidArgumentError
from triptych.io import atomic_write_text
from triptych.training.precision import PRECISIONS, precision_scope

AUTO = "auto"
BF16_MARGIN = 1.1  # bf16 must be this much faster: a near-tie is not worth its 8-bit significand
MEASURE_TIMEOUT_S = 300.0  # TensorFlow's import and a few seconds of steps; far more on a crowded machine
MEMO_FILE = "precision-auto.json"
_VERSION = "triptych-precision-auto-1"
# CPU features that decide which oneDNN kernels run (the same list as benchmarks/timing.py's).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "avx512_fp16")
# ONEDNN_MAX_CPU_ISA caps that leave oneDNN no bf16 instructions, or no AMX.
_CAPS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
_CAPS_WITHOUT_AMX = {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512"}
_CHOSEN: dict[str, PrecisionChoice] = {}  # machine key -> the answer for the rest of this process


@dataclass(frozen=True)
class Machine:
    """Everything the fastest precision depends on; :meth:`key` names it in the memo."""

    cpu: str
    cpu_flags: tuple[str, ...]
    onednn_max_cpu_isa: str | None
    onednn_opts: str | None  # TF_ENABLE_ONEDNN_OPTS: 0 turns oneDNN (and its bf16 kernels) off
    tensorflow: str
    keras: str
    gpus: tuple[str, ...] = ()
    gpu_compute_capability: tuple[int, int] | None = None  # the smallest over the GPUs

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def native_bf16(self) -> list[str]:
        """The CPU's bf16 instruction sets that oneDNN may use here (none under an AVX2 cap)."""
        cap = (self.onednn_max_cpu_isa or "ALL").upper()
        if cap in _CAPS_WITHOUT_BF16 or self.onednn_opts == "0":
            return []
        usable = [f for f in ("avx512_bf16", "amx_bf16") if f in self.cpu_flags]
        return [f for f in usable if f != "amx_bf16"] if cap in _CAPS_WITHOUT_AMX else usable

    def describe_cpu(self) -> str:
        native = ", ".join(self.native_bf16()) or "none"
        cap = f"; ONEDNN_MAX_CPU_ISA={self.onednn_max_cpu_isa}" if self.onednn_max_cpu_isa else ""
        off = "; TF_ENABLE_ONEDNN_OPTS=0" if self.onednn_opts == "0" else ""
        return f"{self.cpu}, native bf16: {native} (flags: {', '.join(self.cpu_flags) or 'none'}{cap}{off})"


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision an experiment runs in, what was asked for and why; ``record()`` goes in the manifest."""

    precision: str
    requested: str
    reason: str
    measured: dict = field(default_factory=dict)

    def record(self) -> dict:
        return asdict(self)


def this_machine() -> Machine:
    """The facts of the machine this process runs on (``/proc/cpuinfo``, environment, TensorFlow)."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:  # x86, ARM
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass  # not Linux: the measurement decides alone
    gpus = tf.config.list_physical_devices("GPU")
    details = [tf.config.experimental.get_device_details(gpu) for gpu in gpus]
    capabilities = [tuple(d["compute_capability"]) for d in details if d.get("compute_capability")]
    return Machine(
        cpu=model,
        cpu_flags=tuple(f for f in CPU_FLAGS if f in flags),
        onednn_max_cpu_isa=os.environ.get("ONEDNN_MAX_CPU_ISA"),
        onednn_opts=os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        tensorflow=tf.__version__,
        keras=keras.__version__,
        gpus=tuple(d.get("device_name", gpu.name) for d, gpu in zip(details, gpus, strict=True)),
        gpu_compute_capability=min(capabilities) if capabilities else None,
    )


def resolve_precision(
    requested: str,
    cache: str | os.PathLike | None = None,
    machine: Machine | None = None,
    measure: Callable[[], dict] | None = None,
) -> PrecisionChoice:
    """The precision to run in. ``fp32``, ``bf16``, ``fp16``: as asked. ``auto``: remembered for
    this machine in ``cache`` (default :func:`triptych.cache.cache_dir`), else decided (on a CPU:
    measured with ``measure``, in a child process by default) and remembered. The first answer
    holds for the rest of the process (whatever ``cache``), so every experiment of a comparison
    runs alike."""
    if requested in PRECISIONS:
        return PrecisionChoice(requested, requested, f"training.precision is {requested}")
    if requested != AUTO:
        raise InvalidArgumentError(
            f"unknown training.precision {requested!r}; expected {AUTO} or one of {', '.join(PRECISIONS)}"
        )
    machine = machine or this_machine()
    memo = memo_path(cache)
    if machine.key() not in _CHOSEN:
        _CHOSEN[machine.key()] = _recalled(memo, machine) or _decided(memo, machine, measure or measure_in_child)
    return _CHOSEN[machine.key()]


def decide(
    machine: Machine, bf16_speedup: float | None, bf16_error: str | None = None, margin: float = BF16_MARGIN
) -> tuple[str, str]:
    """``(precision, reason)`` for ``auto``; pure, so that every branch is testable without timing.
    ``bf16_speedup``: fp32's median training step / bf16's, measured on this machine (CPUs only);
    ``bf16_error``: why bf16 could not be measured (e.g. it crashes here)."""
    if machine.gpus:
        return _decide_gpu(machine)
    if bf16_error:
        return "fp32", f"bf16 could not be measured on this machine ({bf16_error}); CPU {machine.describe_cpu()}"
    if bf16_speedup is None:
        raise ValueError("a CPU's precision is chosen by measurement: pass the measured bf16_speedup")
    precision, needed = ("bf16", ">=") if bf16_speedup >= margin else ("fp32", "<")
    return precision, (
        f"bf16 measured {bf16_speedup:.2f}x as fast as fp32 on this machine ({needed} the {margin}x that bf16 needs); "
        f"CPU {machine.describe_cpu()}"
    )


def _decide_gpu(machine: Machine) -> tuple[str, str]:
    gpus = f"GPU {', '.join(machine.gpus)}"
    capability = machine.gpu_compute_capability
    if capability is None:
        return "fp32", f"{gpus}: compute capability unknown; not measured"
    gpus += f", compute capability {capability[0]}.{capability[1]}"
    if capability >= (8, 0):
        return "bf16", f"{gpus}: bfloat16 tensor cores (Ampere or newer); not measured"
    if capability >= (7, 0):
        return "fp16", f"{gpus}: float16 but no bfloat16 tensor cores (Volta, Turing), loss scaling on; not measured"
    return "fp32", f"{gpus}: no tensor cores (before Volta); not measured"


# --------------------------------------------------------------------------- measurement


def measure_in_child(timeout: float = MEASURE_TIMEOUT_S, probe: dict | None = None) -> dict:
    """:func:`measure_bf16_speedup` (with ``probe`` as its keyword arguments) in a child process
    (``python -m triptych.training.precision_auto``).

    A child, because bf16 may not merely be slow but broken: under ``ONEDNN_MAX_CPU_ISA=AVX2``
    (TensorFlow 2.21 on a CPU with AVX512-BF16) a bf16 convolution raises and a bf16 matmul
    kills the process with SIGSEGV. The child also keeps the probe's layers, names and memory
    out of the experiment's process. ``{"bf16_error": ...}`` when bf16 did not run."""
    result, error = run_measurement("triptych.training.precision_auto", probe or {}, timeout)
    return {"bf16_error": error} if error else result


def run_measurement(module: str, arguments: dict, timeout: float) -> tuple[dict, str | None]:
    """``python -m module '<arguments as JSON>'`` in a child process that imports this very
    triptych: ``(its last stdout line as JSON, None)``, or ``({}, why it failed)``."""
    source = str(Path(triptych.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)}
    command = [sys.executable, "-m", module, json.dumps(arguments)]
    try:
        child = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {}, f"the measurement did not finish within {timeout:.0f} s"
    if child.returncode == 0:
        return json.loads(child.stdout.strip().splitlines()[-1]), None
    return {}, _child_failure(child.returncode, child.stderr)


def _child_failure(returncode: int, stderr: str) -> str:
    if returncode < 0:
        return f"the measurement process was killed by {signal.Signals(-returncode).name}"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "message:" in line]
    last = (errors or lines or [f"exit status {returncode}"])[-1]
    return f"the measurement failed: {last.split('. Run workload')[0][:300]}"  # oneDNN's hint is noise here


def alternating_seconds(steps: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Each step's wall time per round, after one untimed warm-up call each, in alternating order
    (A B, B A, ...) so that a busy machine slows every side alike."""
    for step in steps.values():
        step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for index in range(rounds):
        for name in list(steps) if index % 2 == 0 else list(steps)[::-1]:
            started = time.perf_counter()
            steps[name]()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def probe_result(key: str, baseline: str, candidate: str, seconds: dict[str, list[float]], probe: str) -> dict:
    """An auto probe's answer: ``key`` = baseline's median step time / candidate's, every sample, the
    probe's description and the load it ran under."""
    rounds = len(seconds[baseline])
    return {
        key: round(statistics.median(seconds[baseline]) / statistics.median(seconds[candidate]), 3),
        "seconds": {name: [round(s, 4) for s in values] for name, values in seconds.items()},
        "probe": f"{probe}, median of {rounds} alternating rounds",
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def measure_bf16_speedup(rounds: int = 7, batch: int = 16, image_size: int = 64, width: int = 64) -> dict:
    """fp32's median training-step time / bf16's (``bf16_speedup``), on a small ResNet-like net:
    one warm-up step each, then ``rounds`` alternating rounds (fp32 bf16, bf16 fp32, ...), so
    that a busy machine slows both alike. About 4 seconds on 2 cores; run it through
    :func:`measure_in_child`."""
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(-1, 1, (batch, image_size, image_size, 3)), tf.float32)
    labels = tf.one_hot(rng.integers(0, 10, batch), 10)
    steps = {}
    for precision in ("fp32", "bf16"):
        with precision_scope(precision):
            steps[precision] = training_step(_probe_net(image_size, width), images, labels)
    return probe_result(
        "bf16_speedup", "fp32", "bf16", alternating_seconds(steps, rounds),
        f"training step, ResNet-like net, {image_size}px batch {batch} width {width}",
    )


def _probe_net(image_size: int, width: int) -> keras.Model:
    """Conv-BN-ReLU, a residual block and a strided stage, as the ResNets are made of."""
    layers = keras.layers

    def conv_bn(x, filters: int, strides: int, name: str, relu: bool = True):
        x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.Activation("relu", name=f"{name}_relu")(x) if relu else x

    inputs = keras.Input((image_size, image_size, 3), name="probe_input")
    x = conv_bn(inputs, width, 2, "probe_stem")
    y = conv_bn(conv_bn(x, width, 1, "probe_block_a"), width, 1, "probe_block_b", relu=False)
    x = layers.Activation("relu", name="probe_block_relu")(layers.Add(name="probe_block_add")([x, y]))
    x = conv_bn(conv_bn(x, 2 * width, 2, "probe_down"), 2 * width, 1, "probe_stage2")
    x = layers.GlobalAveragePooling2D(name="probe_pool")(x)
    outputs = layers.Dense(10, activation="softmax", dtype="float32", name="probe_predictions")(x)
    return keras.Model(inputs, outputs, name="precision_probe")


def training_step(model: keras.Model, images: tf.Tensor, labels: tf.Tensor) -> Callable[[], float]:
    """Forward, float32 loss (as the trainer's), backward and a plain SGD update."""

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.categorical_crossentropy(labels, model(images, training=True)))
        gradients = tape.gradient(loss, model.trainable_variables)
        for variable, gradient in zip(model.trainable_variables, gradients, strict=True):
            variable.assign_sub(0.01 * gradient)
        return loss

    return lambda: float(step())


# --------------------------------------------------------------------------- memo


def memo_path(cache: str | os.PathLike | None = None) -> Path:
    """Where the choices are remembered: ``<cache>/precision-auto.json`` (default ``$TRIPTYCH_CACHE``)."""
    return Path(cache or cache_dir()) / MEMO_FILE


def _recalled(memo: Path, machine: Machine) -> PrecisionChoice | None:
    entry = recall_all(memo).get(machine.key())
    if not isinstance(entry, dict) or entry.get("precision") not in PRECISIONS:
        return None  # never measured here, or a damaged entry: measured again
    reason = f"{entry.get('reason')}; measured {entry.get('measured_at')}, remembered in {memo}"
    return PrecisionChoice(entry["precision"], AUTO, reason, dict(entry.get("measured") or {}))


def _decided(memo: Path, machine: Machine, measure: Callable[[], dict]) -> PrecisionChoice:
    measured = {} if machine.gpus else measure()
    precision, reason = decide(machine, measured.get("bf16_speedup"), measured.get("bf16_error"))
    entry = {"precision": precision, "reason": reason, "measured": measured, "machine": asdict(machine),
             "measured_at": dt.datetime.now().isoformat(timespec="seconds")}
    remember(memo, machine.key(), entry)
    return PrecisionChoice(precision, AUTO, f"{reason}; measured now, remembered in {memo}", measured)


def remember(memo: Path, key: str, entry: dict, version: str = _VERSION) -> None:
    """Store ``entry`` under the machine ``key`` in the JSON memo ``memo`` (best effort)."""
    machines = recall_all(memo, version)
    machines[key] = entry
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(memo, json.dumps({"version": version, "machines": machines}, indent=1) + "\n")
    except OSError:
        pass  # a read-only cache folder: the next process measures again, nothing else breaks


def recall_all(memo: Path, version: str = _VERSION) -> dict:
    """The memo's ``{machine key: entry}``; empty when missing, damaged or of another version."""
    try:
        data = json.loads(memo.read_text(encoding="utf-8"))
        machines = data["machines"] if data.get("version") == version else {}
        return dict(machines) if isinstance(machines, dict) else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


if __name__ == "__main__":  # the child process of measure_in_child: one JSON line
    print(json.dumps(measure_bf16_speedup(**json.loads(sys.argv[1]))))
