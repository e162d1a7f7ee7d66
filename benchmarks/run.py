"""All performance benchmarks side by side in one process; the last line printed is one JSON object.

    python benchmarks/run.py [--quick] [--rounds N] [--profile] [--only NAME ...]

Every ratio is the ratio of the medians of N alternating rounds (A B, B A, ...; timing.alternate)
of the two sides, after one identical warm-up call of each, so machine noise hits both alike.
Beside each: the same ratio in process CPU time, the per-round spread and the load average.
A headline needs N >= 5 (the default: 5 with --quick, 7 without); fewer is flagged as a smoke test.

- ``resnet50_train_vs_keras_applications``: our ResNet-50 training images/s / keras.applications'
  (goal >= 1.0), at 224x224 (also reported at 64x64), ours in keras.applications' layout
  (``keras_compat``: the same multiply-adds) with ``fused_bn: auto``; ``..._cpu_time`` (goal >= 1.1)
  the same in process CPU time, at 224x224 and 64x64;
- ``finetune_recipe_cached_vs_uncached``: the demo's whole two-phase Xception recipe with the head
  feature cache and the phase-2 trunk cache, every cache build included, / the same recipe on
  images (goal <= 0.3); ``finetune_trunk_cached_vs_full_epoch_xception`` (block14 open, goal <= 0.2)
  and ``_densenet121`` (last two dense layers open, goal <= 0.05): a phase-2 epoch on the trunk cache /
  a normal fine-tune epoch at 224 px (benchmarks/finetune_cache.py says how). Phase 1 alone:
  ``finetune_cached_vs_uncached_incl_cache_build``. Secondary, never the headline:
  ``finetune_cached_vs_uncached_epoch``, per head epoch, which leaves the cache build out (named beside it);
- ``bf16_vs_fp32_inference``: Xception and DenseNet-121 inference speed-up under ``mixed_bfloat16``
  (>= 1.5), with the accuracy change of a head trained on fp32 features of real WikiArt paintings
  (real ImageNet Xception weights when present) and evaluated on fp32 vs bf16 features (<= 0.5 pt);
- ``train_fraction_of_matmul_peak``: ResNet-50 training FLOP/s (3 x forward MACs x 2 x img/s) / a large
  fp32 ``tf.matmul``'s FLOP/s (best of 3), measured just before and just after the rounds (>= 0.55);
- ``input_pipeline_vs_model``: tf.data images/s on real JPEGs / ResNet-50 training images/s (>= 5);
- ``precision_auto_choice_correct``: ``precision: auto``, resolved with an empty cache (its own
  measurement), picked the faster of fp32 and bf16 as measured side by side in the same run on our
  ResNet-50's training steps (``precision_auto_bf16_speedup_training``); ``bf16_native``: the CPU has
  AVX512-BF16 or AMX and oneDNN may use them (not capped by ONEDNN_MAX_CPU_ISA); the bf16 speed-up
  goal of 1.5x holds only there;
- ``budget_overrun``: wall time / budget of a small budgeted run (``run_config`` with
  ``RunOptions(budget=...)``: 120 s with --quick, else 300 s, two tiny CIFAR-10 experiments whose
  configured epochs cannot fit, each in its own process, report included) (goal <= 1.05);
- ``multiworker_2_matches_single``: 2 localhost workers (MultiWorkerMirroredStrategy) end with identical
  weights, match one process with the same global batch, and resume from BackupAndRestore.
- ``multiworker_product_matches_single``: ``triptych run`` itself on 2 localhost workers (TF_CONFIG)
  vs one process, on a small config (tests/multiworker_run_check.py, which states the tolerances):
  complete run directories and report, equal predictions on both workers, a frozen-BatchNorm
  fine-tune matching the single run.

The JSON line's ``resolution`` says what the figures rest on: rounds, sizes and batches per section,
the CPU's flags (avx512_bf16, amx_*), ONEDNN_MAX_CPU_ISA and the load average. Absolute numbers,
the machine (CPU, cores, TF/Keras versions) and every sample go to
``benchmarks/results/<timestamp>.json``. ``--profile`` adds a per-op-type time breakdown of one
training step of both ResNet-50s (tf.profiler).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import functools
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # timing, resnet_throughput, finetune_cache
if not any(Path(p, "triptych").is_dir() for p in sys.path if p):
    sys.path.insert(0, str(HERE.parent / "src"))

import keras
import numpy as np
import tensorflow as tf
import timing

SHARED = Path(os.environ.get("TRIPTYCH_SHARED", HERE.parent.parent / "shared"))
WIKIART = Path(os.environ.get("TRIPTYCH_MIRROR", SHARED / "datasets")) / "wikiart"
XCEPTION_WEIGHTS = Path(os.environ.get("TRIPTYCH_WEIGHTS", SHARED / "weights")) / "xception_imagenet_notop.weights.h5"
SECTIONS = ("multiworker", "multiworker_run", "resnet", "finetune", "bf16", "precision", "pipeline", "budget")
MIN_HEADLINE_ROUNDS = 5  # fewer alternating rounds: a smoke test, not a headline


def log(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- machine and peak


def machine() -> dict:
    from triptych.training.precision_auto import this_machine

    return {
        **timing.cpu_resolution(),
        "native_bf16": this_machine().native_bf16(),  # AVX512-BF16 / AMX that oneDNN may use here
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86 CPUs)"),
        "threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads() or "auto",
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads() or "auto",
        },
        "load_average_start": timing.load_average(),
    }


def matmul_gflops(n: int, dtype: str = "float32", repeats: int = 3) -> float:
    """Best of ``repeats`` timings of one n x n x n tf.matmul (2 n^3 FLOPs), in GFLOP/s."""
    a = tf.cast(tf.random.stateless_normal((n, n), seed=(1, 2)), dtype)
    b = tf.cast(tf.random.stateless_normal((n, n), seed=(3, 4)), dtype)
    run = _matmul_fn()
    run(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run(a, b).numpy()
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


def bf16_matmul_gflops(n: int) -> tuple[float | None, str | None]:
    """The bf16 peak, measured in a child process: with ``ONEDNN_MAX_CPU_ISA=AVX2`` TensorFlow 2.21's
    oneDNN has no bf16 matmul and ends the whole process (C++ ``terminate``), which must not take
    every other section with it. ``(GFLOP/s, None)``, or ``(None, why)`` when bf16 cannot run here."""
    code = f"import run; print(run.matmul_gflops({n}, 'bfloat16'))"
    child = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True, timeout=900, check=False)
    if child.returncode == 0:
        return float(child.stdout.strip().splitlines()[-1]), None
    lines = [line for line in child.stderr.splitlines() if line.strip()]
    return None, f"bf16 matmul failed (exit {child.returncode}): {lines[-1][:200] if lines else 'no message'}"


_MATMUL = None


def _matmul_fn():
    global _MATMUL
    if _MATMUL is None:
        _MATMUL = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b), "float32")))
    return _MATMUL


# --------------------------------------------------------------------------- ResNet-50 training


def resnet_training(quick: bool, peak_n: int, rounds: int) -> dict:
    """Ours vs keras.applications in alternating rounds after one identical warm-up each
    (resnet_throughput.compare). The fp32 matmul peak is measured just before and just after the
    rounds, never between them, so it burdens neither side."""
    import resnet_throughput as rt

    from triptych.models.profile import count_macs

    result = {}
    for size, batch, steps in [(224, 16, 1), (64, 32, 2)] if quick else [(224, 32, 2), (64, 64, 4)]:
        models = rt.make_models(size)
        macs = {name: count_macs(model) for name, model in models.items()}
        peaks = [matmul_gflops(peak_n)]
        entry = rt.throughput_entry(rt.compare(models, size, batch, steps, rounds), size, batch, steps)
        peaks.append(matmul_gflops(peak_n))
        ours, theirs = entry["triptych_img_per_s"], entry["keras_applications_img_per_s"]
        train_gflops = 6 * macs[rt.OURS] * ours / 1e9  # forward + backward = 3 x forward MACs, 2 FLOPs each
        entry.update({
            "triptych_gmacs": round(macs[rt.OURS] / 1e9, 3),
            "keras_applications_gmacs": round(macs[rt.THEIRS] / 1e9, 3),
            # per FLOP: 1 x the ratio while ours is built in keras.applications' layout (keras_compat)
            "flops_ratio": round(ours * macs[rt.OURS] / (theirs * macs[rt.THEIRS]), 4),
            "matmul_peak_gflops_before_after": [round(p, 1) for p in peaks],
            "train_gflops": round(train_gflops, 1),
            "fraction_of_peak": round(train_gflops / float(np.median(peaks)), 4),
        })
        result[f"{size}x{size}"] = entry
        log(f"{rt.describe(entry)}; per FLOP {entry['flops_ratio']:.3f}; {entry['train_gflops']} GFLOP/s = "
            f"{entry['fraction_of_peak']:.2f} of the fp32 matmul peak ({np.median(peaks):.0f} GFLOP/s, before/after)")
        del models
        keras.backend.clear_session()
    plans = "; ".join(f"{e['image_size']}px batch {e['batch']} x {e['steps']} step(s)" for e in result.values())
    result["fused_bn"] = rt.fused_bn_choice()
    result["resolution"] = (f"{rounds} rounds each: {plans}; ours in keras.applications' layout (keras_compat), "
                            f"fused BatchNorm: {result['fused_bn']['fused']}")
    return result


def profile_training(size: int = 224, batch: int = 16, steps: int = 2) -> dict:
    """Per-op-type share of the op time in ``steps`` training steps of both ResNet-50s (tf.profiler)."""
    import resnet_throughput as rt
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    containers = ("Process", "Run", "RunAsync", "multi_step_on_iterator", "one_step_on_data", "FunctionRun")
    result = {}
    data = rt.synthetic_batches(size, batch)
    for name, model in rt.make_models(size).items():
        rt.train_steps(model, data, 1)  # trace and warm up
        with tempfile.TemporaryDirectory() as logdir:
            tf.profiler.experimental.start(logdir)
            rt.train_steps(model, data, steps)
            tf.profiler.experimental.stop()
            space = xplane_pb2.XSpace()
            space.ParseFromString(Path(max(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))).read_bytes())
        seconds = collections.Counter()
        for plane in space.planes:
            if plane.name != "/host:CPU":
                continue
            for line in plane.lines:
                for event in line.events:
                    label = plane.event_metadata[event.metadata_id].name
                    if ":" not in label or "::" in label or any(c in label for c in containers):
                        continue
                    seconds[label.rsplit(":", 1)[1]] += event.duration_ps / 1e12
        total = sum(seconds.values())
        groups = collections.Counter()
        for op, s in seconds.items():
            groups[_op_group(op)] += s
        result[name] = {
            "op_seconds_per_step": round(total / steps, 3),
            "groups_percent": {g: round(100 * s / total, 1) for g, s in groups.most_common()},
            "top_ops_percent": {op: round(100 * s / total, 1) for op, s in seconds.most_common(12)},
        }
        log(f"profile {name} {size}x{size}: " + ", ".join(f"{g} {p}%" for g, p in result[name]["groups_percent"].items()))
    return result


def _op_group(op: str) -> str:
    if "Conv2D" in op:
        return "convolution (fwd+bwd)"
    if op in ("MatMul", "_MklMatMul", "BiasAdd", "BiasAddGrad", "Softmax", "_MklNativeFusedMatMul"):
        return "dense"
    if op in ("Mean", "Sum", "SquaredDifference", "Tile", "Rsqrt", "RsqrtGrad", "BroadcastTo", "Reshape", "StopGradient"):
        return "batchnorm statistics (unfused)"
    if op in ("Mul", "Sub", "AddV2", "Add", "AddN", "RealDiv", "Neg", "Square", "Maximum", "Cast"):
        return "elementwise (batchnorm, optimizer, residual)"
    if op in ("AssignVariableOp", "ReadVariableOp", "AssignAddVariableOp", "AssignSubVariableOp", "ResourceApplyKerasMomentum"):
        return "variables / optimizer"
    if "Relu" in op:
        return "relu"
    if "Pool" in op or op in ("Pad", "PadGrad", "Slice"):
        return "pooling / padding"
    return "other"


# --------------------------------------------------------------------------- fine-tuning cache


def finetune(quick: bool, rounds: int) -> dict:
    import finetune_cache

    settings = finetune_cache.recipe()
    result = finetune_cache.measure_all(128 if quick else 256, rounds, settings, trunk_images=64 if quick else 256)
    result["resolution"] = (f"{rounds} rounds; recipe: Xception {settings['image_size']}px batch {settings['batch_size']}, "
                            f"{result['recipe']['images']} images, {settings['epochs']}+{settings['fine_tune_epochs']} "
                            f"epochs, {settings['cache_views']}+{settings['trunk_views']} views; trunk epochs at 224px, "
                            f"{result['trunk']['xception']['images']} images")
    log(finetune_cache.describe_all(result))
    return result


# --------------------------------------------------------------------------- bf16 inference


def wikiart_examples(per_class: int, offset: int, seed: int = 0):
    """``per_class`` WikiArt paintings of each class (after the first ``offset`` of a seeded shuffle)."""
    from triptych.data.sources import load_folder

    source = load_folder(WIKIART)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(len(source.class_names)):
        indices = np.flatnonzero(source.train.labels == label)
        rng.shuffle(indices)
        chosen.extend(indices[offset : offset + per_class])
    return source.train.take(np.sort(np.asarray(chosen))), len(source.class_names)


def bf16_inference(quick: bool, rounds: int) -> dict:
    """Per architecture: fp32 and bf16 twins (same weights). Speed: the same batch of real paintings
    through each, in alternating rounds. Accuracy: a logistic-regression head trained on fp32
    features of other paintings, scored on the fp32 and the bf16 features of the test paintings."""
    from triptych.data.pipeline import make_dataset
    from triptych.data.preprocessing import get_preprocessor
    from triptych.models import build, get_spec
    from triptych.training.feature_cache import feature_extractor
    from triptych.training.precision import precision_scope

    train_per_class, test_per_class, batch = (30, 40, 16) if quick else (100, 100, 32)
    result = {}
    for arch in ("xception", "densenet121"):
        spec = get_spec(arch)
        size = spec.default_input_shape[0]
        weights = str(XCEPTION_WEIGHTS) if arch == "xception" and XCEPTION_WEIGHTS.is_file() else None
        fp32 = build(arch, 3, (size, size, 3), weights=weights)
        with precision_scope("bf16"):
            bf16 = build(arch, 3, (size, size, 3), weights=None)
        bf16.set_weights(fp32.get_weights())
        extract = {"fp32": feature_extractor(fp32), "bf16": feature_extractor(bf16)}
        preprocess = get_preprocessor(spec.preprocessing)

        def dataset(examples, num_classes, size=size, preprocess=preprocess):
            return make_dataset(examples, num_classes, size, batch, preprocess, training=False, seed=0, cache=False)

        train, num_classes = wikiart_examples(train_per_class, 0)
        test, _ = wikiart_examples(test_per_class, train_per_class)
        test_x = {name: _features(e, dataset(test, num_classes)) for name, e in extract.items()}
        train_x = _features(extract["fp32"], dataset(train, num_classes))
        timed_batch = next(iter(dataset(test, num_classes)))[0]
        comparison = timing.alternate({n: functools.partial(e.predict_on_batch, timed_batch) for n, e in extract.items()}, rounds)
        report = comparison.report("fp32", "bf16")
        entry = {
            "image_size": size,
            "weights": "imagenet (local file)" if weights else "random (no offline ImageNet weights)",
            "batch": batch,
            "fp32_img_per_s": round(batch / comparison.median("fp32"), 2),
            "bf16_img_per_s": round(batch / comparison.median("bf16"), 2),
            "speedup": report["ratio_wall"],
            "speedup_cpu_time": report["ratio_cpu"],
            **_head_accuracy(train_x, train.labels, test_x, test.labels),
            "timing": report,
        }
        result[arch] = entry
        log(
            f"{arch} inference {size}px batch {batch}: fp32 {entry['fp32_img_per_s']} img/s, bf16 {entry['bf16_img_per_s']} "
            f"img/s, speed-up {entry['speedup']:.2f}x (median of {report['rounds']} alternating rounds, per round "
            f"{report['ratio_wall_round_min']:.2f}-{report['ratio_wall_round_max']:.2f}; CPU time {entry['speedup_cpu_time']:.2f}x; "
            f"load {report['load_average_before'][0]} -> {report['load_average_after'][0]}); head accuracy fp32 "
            f"{entry['head_accuracy_fp32']:.3f} vs bf16 {entry['head_accuracy_bf16']:.3f} ({entry['accuracy_change_points']:+.2f} pt, "
            f"agreement {entry['top1_agreement']:.3f}, weights {entry['weights']})"
        )
        del fp32, bf16, extract
        keras.backend.clear_session()
    sizes = ", ".join(f"{arch} {e['image_size']}px" for arch, e in result.items())
    result["resolution"] = f"{rounds} rounds of one batch of {batch}: {sizes}; accuracy on {test_per_class} paintings per class"
    return result


def _features(extractor: keras.Model, dataset) -> np.ndarray:
    return np.concatenate([np.asarray(extractor.predict_on_batch(x), np.float32) for x, _ in dataset])


def _head_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: dict[str, np.ndarray], test_y: np.ndarray) -> dict:
    """A head fitted on fp32 features, scored on the fp32 and on the bf16 features of the same paintings."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.5))
    head.fit(train_x, train_y)
    predicted = {name: head.predict(x) for name, x in test_x.items()}
    probabilities = {name: head.predict_proba(x) for name, x in test_x.items()}
    accuracy = {name: float(np.mean(p == test_y)) for name, p in predicted.items()}
    relative = np.linalg.norm(test_x["bf16"] - test_x["fp32"]) / np.linalg.norm(test_x["fp32"])
    return {
        "train_images": len(train_x),
        "test_images": len(test_y),
        "head_accuracy_fp32": round(accuracy["fp32"], 4),
        "head_accuracy_bf16": round(accuracy["bf16"], 4),
        "accuracy_change_points": round(100 * (accuracy["bf16"] - accuracy["fp32"]), 2),
        "accuracy_resolution_points": round(100 / len(test_y), 2),  # one changed prediction
        "top1_agreement": round(float(np.mean(predicted["bf16"] == predicted["fp32"])), 4),
        "max_probability_diff": round(float(np.max(np.abs(probabilities["bf16"] - probabilities["fp32"]))), 4),
        "feature_relative_error": round(float(relative), 5),
    }


# --------------------------------------------------------------------------- precision: auto


def precision_auto(quick: bool, rounds: int) -> dict:
    """Does ``precision: auto`` pick the faster precision? It is resolved with an empty cache (so
    it measures, in its child process, as on a fresh machine); then our ResNet-50 trains under
    fp32 and under bf16 (same weights, same batch) in alternating rounds."""
    import resnet_throughput as rt

    from triptych.training.precision_auto import BF16_MARGIN, resolve_precision

    with tempfile.TemporaryDirectory(prefix="triptych-precision-") as cache:
        choice = resolve_precision("auto", cache=cache)
    size, batch, steps = (64, 16, 1) if quick else (96, 32, 2)
    models, data = _fp32_and_bf16_resnets(size), rt.synthetic_batches(size, batch)
    resolution = (f"{rounds} rounds of {steps} ResNet-50 training step(s), {size}px batch {batch}; auto's own "
                  f"probe: {choice.measured.get('probe', 'none (GPU rule or a failed measurement)')}")
    try:
        comparison = timing.alternate({p: functools.partial(rt.train_steps, m, data, steps) for p, m in models.items()}, rounds)
    except tf.errors.OpError as err:  # bf16 may not run at all (ONEDNN_MAX_CPU_ISA=AVX2 on TF 2.21)
        lines = err.message.strip().splitlines()
        error = next((line for line in lines if "could not" in line), lines[0]).split(". Run workload")[0][:300]
        log(f"precision auto: picked {choice.precision} ({choice.reason}); bf16 training does not run here: {error}")
        return {"choice": choice.record(), "bf16_error": error, "faster": "fp32",
                "correct": choice.precision == "fp32", "resolution": resolution}
    finally:
        del models
        keras.backend.clear_session()
    report = comparison.report("fp32", "bf16")  # fp32 seconds / bf16 seconds: bf16's speed-up
    faster = "bf16" if report["ratio_wall"] > 1 else "fp32"
    result = {
        "choice": choice.record(),
        "bf16_speedup_training": report["ratio_wall"],
        "bf16_speedup_training_cpu_time": report["ratio_cpu"],
        "faster": faster,
        "correct": choice.precision == faster,
        # auto keeps fp32 unless bf16 is >= BF16_MARGIN x faster: a "wrong" pick in between costs < 10%
        "within_margin": 1 < report["ratio_wall"] < BF16_MARGIN,
        "timing": report,
        "resolution": resolution,
    }
    log(f"precision auto: picked {choice.precision} ({choice.reason}); ResNet-50 training {size}px batch {batch}: "
        f"bf16 {report['ratio_wall']:.2f}x fp32 (median of {rounds} alternating rounds, per round "
        f"{report['ratio_wall_round_min']:.2f}-{report['ratio_wall_round_max']:.2f}; CPU time {report['ratio_cpu']:.2f}x) "
        f"-> faster: {faster}, auto correct: {result['correct']}")
    return result


def _fp32_and_bf16_resnets(size: int) -> dict[str, keras.Model]:
    """Our ResNet-50 under each policy, compiled alike, with the same weights."""
    import resnet_throughput as rt

    from triptych.training.precision import precision_scope

    models = {}
    for precision in ("fp32", "bf16"):
        with precision_scope(precision):
            models[precision] = rt.ours(size)
            models[precision].compile(keras.optimizers.SGD(0.01, momentum=0.9), "categorical_crossentropy")
    models["bf16"].set_weights(models["fp32"].get_weights())
    return models


# --------------------------------------------------------------------------- input pipeline


def input_pipeline(quick: bool, rounds: int) -> dict:
    """tf.data on real JPEGs (decode, resize, augment, normalise, batch; no cache, as training runs
    it) vs our ResNet-50 training on synthetic batches, in alternating rounds: images/s of each."""
    import resnet_throughput as rt

    from triptych.data.pipeline import Augment, make_dataset
    from triptych.data.preprocessing import get_preprocessor
    from triptych.training.trainer import without_autotune_wait

    examples, num_classes = wikiart_examples(200 if quick else 600, 0)
    size, batch = 224, 32
    model_batch, model_steps = (16, 1) if quick else (32, 2)  # as resnet_training's 224px plan
    counts = []

    def one_pass() -> None:
        ds = make_dataset(
            examples, num_classes, size, batch, get_preprocessor("torch"), training=True, seed=0,
            augment=Augment(crop_padding=16, flip=True), cache=False,
        )
        counts.append(sum(int(x.shape[0]) for x, _ in without_autotune_wait(ds)))  # as the trainer runs it

    model = rt.make_models(size)[rt.OURS]
    data = rt.synthetic_batches(size, model_batch)
    # The warm-up call of each also warms the page cache and traces.
    comparison = timing.alternate({"pipeline": one_pass, "model": lambda: rt.train_steps(model, data, model_steps)}, rounds)
    report = comparison.report("model", "pipeline")
    per_pass = counts[-1] / (model_batch * model_steps)
    result = {
        "images": len(examples), "image_size": size, "batch": batch, "source": str(WIKIART),
        "img_per_s": round(counts[-1] / comparison.median("pipeline"), 1),
        "model_img_per_s": round(model_batch * model_steps / comparison.median("model"), 3),
        "pipeline_vs_model": round(report["ratio_wall"] * per_pass, 2),
        "pipeline_vs_model_cpu_time": round(report["ratio_cpu"] * per_pass, 2),
        "pipeline_vs_model_round_min": round(report["ratio_wall_round_min"] * per_pass, 2),
        "pipeline_vs_model_round_max": round(report["ratio_wall_round_max"] * per_pass, 2),
        "timing": report,
        "resolution": f"{rounds} rounds: one pass over {counts[-1]} JPEGs -> {size}px batch {batch} vs "
                      f"{model_steps} ResNet-50 training step(s) of batch {model_batch}",
    }
    log(f"input pipeline (WikiArt JPEGs -> {size}px batches): {result['img_per_s']} img/s = {result['pipeline_vs_model']}x "
        f"our ResNet-50 training ({result['model_img_per_s']} img/s; median of {rounds} alternating rounds, per round "
        f"{result['pipeline_vs_model_round_min']}-{result['pipeline_vs_model_round_max']}; CPU time "
        f"{result['pipeline_vs_model_cpu_time']}x)")
    del model
    keras.backend.clear_session()
    return result


# --------------------------------------------------------------------------- time budget


def budgeted_run(quick: bool, budget: float | None = None) -> dict:
    """A whole config under one budget, timed from the call to the report: wall time / budget.
    The default budget fits a quiet 2-core machine; a busy one needs more (``budget``)."""
    from triptych.config import parse_config
    from triptych.runner import RunOptions, run_config

    budget = budget or (120 if quick else 300)
    data = {"dataset": "cifar10", "image_size": 16, "train_per_class": 10, "test_per_class": 10, "batch_size": 16}
    experiments = [
        {"name": f"{name}_budgeted", "model": {"name": name, "options": {"stem": "cifar"}}, "data": data,
         "training": {"epochs": 1000, "learning_rate": 0.05, "warmup_epochs": 1, "tensorboard": False}}
        for name in ("resnet18", "resnet34")
    ]
    config = parse_config({"seed": 0, "title": "budget benchmark", "experiments": experiments})
    with tempfile.TemporaryDirectory(prefix="triptych-budget-") as out:
        started = time.perf_counter()
        runs = run_config(config, out, RunOptions(budget=budget), log=lambda _line: None)
        wall = time.perf_counter() - started
        decisions = {run.name: run.read_record().budget.model_dump() for run in runs}
    result = {
        "budget_s": budget,
        "wall_s": round(wall, 1),
        "overrun": round(wall / budget, 3),
        "decisions": decisions,
        "load_average_end": timing.load_average(),
        "resolution": f"one run of {len(experiments)} experiments (16px CIFAR-10, 100 train images each) under {budget} s",
    }
    chosen = ", ".join(f"{name} {d['chosen_epochs']['train']} epochs" for name, d in decisions.items())
    log(f"budgeted run: {result['wall_s']} s for a budget of {budget} s = {result['overrun']}x ({chosen}; load "
        f"{result['load_average_end'][0]})")
    return result


# --------------------------------------------------------------------------- multi-worker


def multiworker() -> dict:
    sys.path.insert(0, str(HERE.parent / "tests"))  # the multi-worker harness is a test helper, not library code
    from multiworker_harness import local_cluster_check

    result = local_cluster_check(num_workers=2, epochs=2, resume=True, timeout=240)
    log(
        f"multi-worker: 2 workers vs 1 process: weights differ by {result['max_weight_diff_between_workers']:.1e} "
        f"between workers, {result['max_weight_diff_vs_single']:.1e} vs single, loss by "
        f"{result['max_loss_diff_vs_single']:.1e}; resumed: {result['epochs_run_after_resume'] == 1}; "
        f"matches: {result['matches']} ({result['seconds']}s)"
    )
    return result


def multiworker_run() -> dict:
    sys.path.insert(0, str(HERE.parent / "tests"))  # a test helper, not library code
    os.environ.setdefault("TRIPTYCH_MIRROR", str(SHARED / "datasets"))  # the workers read CIFAR-10 from there
    from multiworker_run_check import product_check

    result = product_check(timeout=1200)
    finetune = result["experiments"]["finetune"]
    log(f"triptych run on 2 workers vs 1 process: matches: {result['matches']}; fine-tune probabilities differ by "
        f"{finetune['max_prob_diff_vs_single']:.1e} ({result['seconds']}s, both side by side)")
    return result


# --------------------------------------------------------------------------- main


def summarize(details: dict, rounds: int) -> dict:
    def get(*keys, default=None):
        value = details
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return default
            value = value[key]
        return value

    summary = {}
    summary["resnet50_train_vs_keras_applications"] = get("resnet", "224x224", "ratio")
    summary["resnet50_train_vs_keras_applications_cpu_time"] = get("resnet", "224x224", "ratio_cpu_time")
    summary["resnet50_train_vs_keras_applications_64px"] = get("resnet", "64x64", "ratio")
    summary["resnet50_train_vs_keras_applications_cpu_time_64px"] = get("resnet", "64x64", "ratio_cpu_time")
    summary["resnet50_fused_bn"] = get("resnet", "fused_bn", "fused")
    summary["finetune_recipe_cached_vs_uncached"] = get("finetune", "finetune_recipe_cached_vs_uncached")
    summary["finetune_trunk_cached_vs_full_epoch_xception"] = get("finetune", "finetune_trunk_cached_vs_full_epoch_xception")
    summary["finetune_trunk_cached_vs_full_epoch_densenet121"] = get(
        "finetune", "finetune_trunk_cached_vs_full_epoch_densenet121")
    summary["finetune_cached_vs_uncached_incl_cache_build"] = get("finetune", "head_phase", "cached_vs_uncached_incl_cache_build")
    summary["finetune_cached_vs_uncached_incl_cache_build_cpu_time"] = get(
        "finetune", "head_phase", "cached_vs_uncached_incl_cache_build_cpu_time")
    # Secondary, never the headline: per head epoch, the cache build left out (named beside it).
    summary["finetune_cached_vs_uncached_epoch"] = get("finetune", "finetune_cached_vs_uncached_epoch")
    summary["finetune_cached_vs_uncached_epoch_leaves_out"] = get("finetune", "head_phase", "per_epoch_ratio_leaves_out")
    archs = ("xception", "densenet121")
    for suffix, key in (("", "speedup"), ("_cpu_time", "speedup_cpu_time")):
        speedups = [get("bf16", arch, key) for arch in archs]
        summary[f"bf16_vs_fp32_inference{suffix}"] = min(speedups) if all(s is not None for s in speedups) else None
    summary["bf16_vs_fp32_inference_xception"] = get("bf16", "xception", "speedup")
    summary["bf16_vs_fp32_inference_densenet121"] = get("bf16", "densenet121", "speedup")
    summary["bf16_accuracy_change_points_xception"] = get("bf16", "xception", "accuracy_change_points")
    summary["bf16_accuracy_change_points_densenet121"] = get("bf16", "densenet121", "accuracy_change_points")
    summary["bf16_top1_agreement_xception"] = get("bf16", "xception", "top1_agreement")
    summary["train_fraction_of_matmul_peak"] = get("resnet", "224x224", "fraction_of_peak")
    summary["train_fraction_of_matmul_peak_64px"] = get("resnet", "64x64", "fraction_of_peak")
    summary["input_pipeline_vs_model"] = get("pipeline", "pipeline_vs_model")
    summary["input_pipeline_vs_model_cpu_time"] = get("pipeline", "pipeline_vs_model_cpu_time")
    summary["precision_auto_choice_correct"] = get("precision", "correct")
    summary["precision_auto_choice"] = get("precision", "choice", "precision")
    summary["precision_auto_bf16_speedup_training"] = get("precision", "bf16_speedup_training")
    summary["bf16_native"] = bool(details["machine"]["native_bf16"])
    summary["multiworker_2_matches_single"] = get("multiworker", "matches")
    summary["budget_overrun"] = get("budget", "overrun")
    summary["multiworker_product_matches_single"] = get("multiworker_run", "matches")
    summary["resnet50_train_img_per_s_224"] = get("resnet", "224x224", "triptych_img_per_s")
    summary["matmul_peak_gflops_fp32"] = get("peak", "float32_gflops")
    summary["resolution"] = {
        "quick": details["quick"],
        "rounds": rounds,
        "headline_grade": rounds >= MIN_HEADLINE_ROUNDS,
        **{key: details["machine"][key] for key in ("cpu", "cpu_flags", "onednn_max_cpu_isa", "load_average_start",
                                                    "load_average_end")},
        **{name: get(name, "resolution") for name in SECTIONS if get(name, "resolution")},
    }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, one step per sample (about 10 minutes on 2 cores)")
    parser.add_argument("--profile", action="store_true", help="add a tf.profiler per-op breakdown of ResNet-50 training")
    parser.add_argument("--rounds", type=int, help=f"alternating rounds per ratio (default 5 with --quick, else 7; "
                        f"under {MIN_HEADLINE_ROUNDS}: a smoke test, flagged in the results)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for <timestamp>.json")
    args = parser.parse_args()
    sections = args.only or SECTIONS
    rounds = args.rounds or (5 if args.quick else 7)
    if rounds < MIN_HEADLINE_ROUNDS:
        log(f"{rounds} rounds: a smoke test, not headline figures (headline_grade false in the results)")
    started = time.perf_counter()
    details: dict = {"quick": args.quick, "machine": machine()}
    peak_n = 3072 if args.quick else 4096
    bf16_peak, bf16_error = bf16_matmul_gflops(peak_n)
    details["peak"] = {"n": peak_n, "float32_gflops": round(matmul_gflops(peak_n), 1),
                       "bfloat16_gflops": bf16_peak and round(bf16_peak, 1), "bfloat16_error": bf16_error}
    log(f"machine: {details['machine']['cpu']}, {details['machine']['cores']} cores, TF {tf.__version__}, "
        f"Keras {keras.__version__}; matmul peak fp32 {details['peak']['float32_gflops']} GFLOP/s, "
        f"bf16 {details['peak']['bfloat16_gflops'] or details['peak']['bfloat16_error']} GFLOP/s; flags {details['machine']['cpu_flags']}, "
        f"ONEDNN_MAX_CPU_ISA {details['machine']['onednn_max_cpu_isa']}, load {details['machine']['load_average_start']}")
    # Multi-worker first: its worker processes then have the cores to themselves.
    runners = {
        "multiworker": multiworker,
        "multiworker_run": multiworker_run,
        "resnet": lambda: resnet_training(args.quick, peak_n, rounds),
        "finetune": lambda: finetune(args.quick, rounds),
        "bf16": lambda: bf16_inference(args.quick, rounds),
        "precision": lambda: precision_auto(args.quick, rounds),
        "pipeline": lambda: input_pipeline(args.quick, rounds),
        "budget": lambda: budgeted_run(args.quick),
    }
    errors = {}
    for name in sections:
        if name == "bf16" and bf16_error:  # no bf16 kernels here: nothing to compare, not a failure
            details[name] = {"skipped": bf16_error}
            log(f"bf16: skipped, {bf16_error}")
            continue
        try:
            details[name] = runners[name]()
        except Exception as err:  # noqa: BLE001 - one broken section must not lose the others
            errors[name] = f"{err.__class__.__name__}: {err}"
            log(f"{name}: FAILED {errors[name]}\n{traceback.format_exc(limit=3)}")
    if args.profile:
        details["profile"] = profile_training()
    details["errors"] = errors
    details["machine"]["load_average_end"] = timing.load_average()
    details["seconds"] = round(time.perf_counter() - started, 1)
    summary = summarize(details, rounds)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stamp}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps({"summary": summary, **details}, indent=2, default=str) + "\n")
    log(f"results: {path} ({details['seconds']}s)")
    print(json.dumps({**summary, "results_file": str(path), "seconds": details["seconds"]}))


if __name__ == "__main__":
    main()
