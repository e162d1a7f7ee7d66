"""All performance benchmarks side by side in one process; the last line printed is one JSON object.

    python benchmarks/run.py [--quick] [--profile] [--only NAME ...]

Ratios (measured side by side, in alternating rounds, so machine noise hits both sides alike):

- ``resnet50_train_vs_keras_applications``: our ResNet-50 training images/s / keras.applications'
  (goal >= 1.0), at 224x224 (also reported at 32x32);
- ``finetune_cached_vs_uncached_epoch``: phase-1 epoch time with the feature cache / without (<= 0.05);
- ``bf16_vs_fp32_inference``: Xception and DenseNet-121 inference speed-up under ``mixed_bfloat16``
  (>= 1.5), with the accuracy change of a head trained on fp32 features of real WikiArt paintings
  (real ImageNet Xception weights when present) and evaluated on fp32 vs bf16 features (<= 0.5 pt);
- ``train_fraction_of_matmul_peak``: ResNet-50 training FLOP/s (3 x forward MACs x 2 x img/s) / a large
  fp32 ``tf.matmul``'s FLOP/s, each round against the peak measured just before it (>= 0.55);
- ``input_pipeline_vs_model``: tf.data images/s on real JPEGs / ResNet-50 training images/s (>= 5);
- ``multiworker_2_matches_single``: 2 localhost workers (MultiWorkerMirroredStrategy) end with identical
  weights, match one process with the same global batch, and resume from BackupAndRestore.

Absolute numbers, the machine (CPU, cores, TF/Keras versions, load) and every detail go to
``benchmarks/results/<timestamp>.json``. ``--profile`` adds a per-op-type time breakdown of one
training step of both ResNet-50s (tf.profiler).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import glob
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # resnet_throughput, finetune_cache
if not any(Path(p, "triptych").is_dir() for p in sys.path if p):
    sys.path.insert(0, str(HERE.parent / "src"))

import keras
import numpy as np
import tensorflow as tf

SHARED = Path(os.environ.get("TRIPTYCH_SHARED", HERE.parent.parent / "shared"))
WIKIART = Path(os.environ.get("TRIPTYCH_MIRROR", SHARED / "datasets")) / "wikiart"
XCEPTION_WEIGHTS = Path(os.environ.get("TRIPTYCH_WEIGHTS", SHARED / "weights")) / "xception_imagenet_notop.weights.h5"
SECTIONS = ("multiworker", "resnet", "finetune", "bf16", "pipeline")


def log(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- machine and peak


def machine() -> dict:
    cpu, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_flags": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16") if f in flags],
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
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
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


_MATMUL = None


def _matmul_fn():
    global _MATMUL
    if _MATMUL is None:
        _MATMUL = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b), "float32")))
    return _MATMUL


# --------------------------------------------------------------------------- ResNet-50 training


def resnet_training(quick: bool, peak_n: int) -> dict:
    """Ours vs keras.applications in alternating rounds (ABBA order); a fresh matmul-peak sample
    just before each of our measurements. Wall-clock and process-CPU-time throughput both: the
    CPU-time ratio is less disturbed by other processes on a shared machine."""
    import resnet_throughput as rt

    from triptych.models.profile import count_macs

    result = {}
    plans = [(224, 16, 1, 4), (32, 64, 3, 4)] if quick else [(224, 32, 2, 6), (32, 128, 4, 6)]
    for size, batch, steps, rounds in plans:
        models = rt.make_models(size)
        for model in models.values():
            model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "categorical_crossentropy")
            rt.images_per_second(model, size, batch, 1)  # trace and warm up
        macs = {name: count_macs(model) for name, model in models.items()}
        wall = {name: [] for name in models}
        cpu = {name: [] for name in models}
        fractions, peaks = [], []
        names = list(models)
        for round_index in range(rounds):
            for name in names if round_index % 2 == 0 else names[::-1]:
                if name == "triptych":
                    peaks.append(matmul_gflops(peak_n) * 1e9)
                cpu_started = time.process_time()
                ips = rt.images_per_second(models[name], size, batch, steps)
                cpu[name].append(batch * steps / (time.process_time() - cpu_started))
                wall[name].append(ips)
                if name == "triptych":
                    fractions.append(3 * macs[name] * 2 * ips / peaks[-1])
        ours, theirs = (float(np.median(wall[n])) for n in ("triptych", "keras.applications"))
        ours_cpu, theirs_cpu = (float(np.median(cpu[n])) for n in ("triptych", "keras.applications"))
        entry = {
            "batch": batch,
            "steps": steps,
            "rounds": rounds,
            "triptych_img_per_s": round(ours, 3),
            "keras_applications_img_per_s": round(theirs, 3),
            "ratio": round(ours / theirs, 4),
            "ratio_cpu_time": round(ours_cpu / theirs_cpu, 4),
            "triptych_gmacs": round(macs["triptych"] / 1e9, 3),
            "keras_applications_gmacs": round(macs["keras.applications"] / 1e9, 3),
            # per FLOP: ours is v1.5 (stride on the 3x3 conv: ~6% more MACs than keras.applications' v1)
            "flops_ratio": round(ours * macs["triptych"] / (theirs * macs["keras.applications"]), 4),
            "samples_img_per_s": {name: [round(v, 3) for v in values] for name, values in wall.items()},
            "samples_img_per_cpu_s": {name: [round(v, 3) for v in values] for name, values in cpu.items()},
            "matmul_peak_gflops": [round(p / 1e9, 1) for p in peaks],
            "train_gflops": round(6 * macs["triptych"] * ours / 1e9, 1),
            "fraction_of_peak": round(float(np.median(fractions)), 4),
            "fraction_of_peak_samples": [round(f, 4) for f in fractions],
        }
        result[f"{size}x{size}"] = entry
        log(
            f"ResNet-50 training {size}x{size} batch {batch}: ours {ours:.2f} img/s, keras.applications {theirs:.2f} "
            f"img/s, ratio {entry['ratio']:.3f} (CPU time {entry['ratio_cpu_time']:.3f}, per FLOP "
            f"{entry['flops_ratio']:.3f}); {entry['train_gflops']} GFLOP/s = {entry['fraction_of_peak']:.2f} of the "
            f"fp32 matmul peak ({np.median(entry['matmul_peak_gflops']):.0f} GFLOP/s)"
        )
        del models
        keras.backend.clear_session()
    return result


def profile_training(size: int = 224, batch: int = 16, steps: int = 2) -> dict:
    """Per-op-type share of the op time in ``steps`` training steps of both ResNet-50s (tf.profiler)."""
    import resnet_throughput as rt
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    containers = ("Process", "Run", "RunAsync", "multi_step_on_iterator", "one_step_on_data", "FunctionRun")
    result = {}
    for name, model in rt.make_models(size).items():
        model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "categorical_crossentropy")
        rt.images_per_second(model, size, batch, 1)
        with tempfile.TemporaryDirectory() as logdir:
            tf.profiler.experimental.start(logdir)
            rt.images_per_second(model, size, batch, steps)
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


def finetune(quick: bool) -> dict:
    import finetune_cache

    result = finetune_cache.measure(128 if quick else 256, 128, 32)
    log(
        f"phase-1 epoch (Xception {result['image_size']}px, {result['images']} images): uncached "
        f"{result['uncached_epoch_s']:.2f}s, cached {result['cached_epoch_s']:.4f}s, ratio "
        f"{result['finetune_cached_vs_uncached_epoch']:.4f}"
    )
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


def bf16_inference(quick: bool) -> dict:
    """Per architecture: fp32 and bf16 twins (same weights) run on the same batches of real
    paintings, batch by batch in turn. A logistic-regression head trained on fp32 features of
    other paintings is scored on the fp32 and the bf16 features of the test paintings."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

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
        train_x = np.concatenate([np.asarray(extract["fp32"].predict_on_batch(x), np.float32) for x, _ in dataset(train, num_classes)])
        features = {"fp32": [], "bf16": []}
        seconds = {"fp32": [], "bf16": []}
        for name in features:  # trace both first
            extract[name].predict_on_batch(next(iter(dataset(test, num_classes)))[0])
        for images, _ in dataset(test, num_classes):
            if len(images) != batch:
                continue  # a short last batch would skew the per-batch timing
            for name in ("fp32", "bf16"):
                started = time.perf_counter()
                out = extract[name].predict_on_batch(images)
                seconds[name].append(time.perf_counter() - started)
                features[name].append(np.asarray(out, np.float32))
        test_x = {name: np.concatenate(values) for name, values in features.items()}
        test_y = test.labels[: len(test_x["fp32"])]
        head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.5))
        head.fit(train_x, train.labels)
        predicted = {name: head.predict(x) for name, x in test_x.items()}
        probabilities = {name: head.predict_proba(x) for name, x in test_x.items()}
        accuracy = {name: float(np.mean(p == test_y)) for name, p in predicted.items()}
        relative = np.linalg.norm(test_x["bf16"] - test_x["fp32"]) / np.linalg.norm(test_x["fp32"])
        entry = {
            "image_size": size,
            "weights": "imagenet (local file)" if weights else "random (no offline ImageNet weights)",
            "batch": batch,
            "batches_timed": len(seconds["fp32"]),
            "fp32_img_per_s": round(batch / float(np.median(seconds["fp32"])), 2),
            "bf16_img_per_s": round(batch / float(np.median(seconds["bf16"])), 2),
            "speedup": round(float(np.median(seconds["fp32"]) / np.median(seconds["bf16"])), 3),
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
        result[arch] = entry
        log(
            f"{arch} inference {size}px: fp32 {entry['fp32_img_per_s']} img/s, bf16 {entry['bf16_img_per_s']} img/s, "
            f"speed-up {entry['speedup']:.2f}x; head accuracy fp32 {accuracy['fp32']:.3f} vs bf16 {accuracy['bf16']:.3f} "
            f"({entry['accuracy_change_points']:+.2f} pt, agreement {entry['top1_agreement']:.3f}, weights {entry['weights']})"
        )
        del fp32, bf16, extract
        keras.backend.clear_session()
    return result


# --------------------------------------------------------------------------- input pipeline


def input_pipeline(quick: bool) -> dict:
    """tf.data on real JPEGs: decode, resize, augment, normalise, batch (no cache), as training runs it."""
    from triptych.data.pipeline import Augment, make_dataset
    from triptych.data.preprocessing import get_preprocessor
    from triptych.training.trainer import without_autotune_wait

    examples, num_classes = wikiart_examples(200 if quick else 600, 0)
    size, batch = 224, 32

    def one_pass() -> float:
        ds = make_dataset(
            examples, num_classes, size, batch, get_preprocessor("torch"), training=True, seed=0,
            augment=Augment(crop_padding=16, flip=True), cache=False,
        )
        ds = without_autotune_wait(ds)  # as the trainer runs it
        started = time.perf_counter()
        count = sum(int(x.shape[0]) for x, _ in ds)
        return count / (time.perf_counter() - started)

    one_pass()  # warm the page cache and trace
    samples = [one_pass() for _ in range(2 if quick else 3)]
    result = {"images": len(examples), "image_size": size, "batch": batch, "img_per_s": round(float(np.median(samples)), 1),
              "source": str(WIKIART)}
    log(f"input pipeline (WikiArt JPEGs -> {size}px batches): {result['img_per_s']} img/s")
    return result


# --------------------------------------------------------------------------- multi-worker


def multiworker() -> dict:
    from triptych.training.distribute import local_cluster_check

    result = local_cluster_check(num_workers=2, epochs=2, resume=True, timeout=240)
    log(
        f"multi-worker: 2 workers vs 1 process: weights differ by {result['max_weight_diff_between_workers']:.1e} "
        f"between workers, {result['max_weight_diff_vs_single']:.1e} vs single, loss by "
        f"{result['max_loss_diff_vs_single']:.1e}; resumed: {result['epochs_run_after_resume'] == 1}; "
        f"matches: {result['matches']} ({result['seconds']}s)"
    )
    return result


# --------------------------------------------------------------------------- main


def summarize(details: dict) -> dict:
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
    summary["resnet50_train_vs_keras_applications_32px"] = get("resnet", "32x32", "ratio")
    summary["finetune_cached_vs_uncached_epoch"] = get("finetune", "finetune_cached_vs_uncached_epoch")
    speedups = [get("bf16", arch, "speedup") for arch in ("xception", "densenet121")]
    summary["bf16_vs_fp32_inference"] = min(speedups) if all(s is not None for s in speedups) else None
    summary["bf16_vs_fp32_inference_xception"] = speedups[0]
    summary["bf16_vs_fp32_inference_densenet121"] = speedups[1]
    summary["bf16_accuracy_change_points_xception"] = get("bf16", "xception", "accuracy_change_points")
    summary["bf16_accuracy_change_points_densenet121"] = get("bf16", "densenet121", "accuracy_change_points")
    summary["bf16_top1_agreement_xception"] = get("bf16", "xception", "top1_agreement")
    summary["train_fraction_of_matmul_peak"] = get("resnet", "224x224", "fraction_of_peak")
    ours = get("resnet", "224x224", "triptych_img_per_s")
    pipeline = get("pipeline", "img_per_s")
    summary["input_pipeline_vs_model"] = round(pipeline / ours, 2) if ours and pipeline else None
    summary["multiworker_2_matches_single"] = get("multiworker", "matches")
    summary["resnet50_train_img_per_s_224"] = ours
    summary["matmul_peak_gflops_fp32"] = get("peak", "float32_gflops")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, few steps (under ~10 minutes on 2 cores)")
    parser.add_argument("--profile", action="store_true", help="add a tf.profiler per-op breakdown of ResNet-50 training")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for <timestamp>.json")
    args = parser.parse_args()
    sections = args.only or SECTIONS
    started = time.perf_counter()
    details: dict = {"quick": args.quick, "machine": machine()}
    peak_n = 3072 if args.quick else 4096
    details["peak"] = {"n": peak_n, "float32_gflops": round(matmul_gflops(peak_n), 1),
                       "bfloat16_gflops": round(matmul_gflops(peak_n, "bfloat16"), 1)}
    log(f"machine: {details['machine']['cpu']}, {details['machine']['cores']} cores, TF {tf.__version__}, "
        f"Keras {keras.__version__}; matmul peak fp32 {details['peak']['float32_gflops']} GFLOP/s, "
        f"bf16 {details['peak']['bfloat16_gflops']} GFLOP/s")
    # Multi-worker first: its worker processes then have the cores to themselves.
    runners = {
        "multiworker": multiworker,
        "resnet": lambda: resnet_training(args.quick, peak_n),
        "finetune": lambda: finetune(args.quick),
        "bf16": lambda: bf16_inference(args.quick),
        "pipeline": lambda: input_pipeline(args.quick),
    }
    errors = {}
    for name in sections:
        try:
            details[name] = runners[name]()
        except Exception as err:  # noqa: BLE001 - one broken section must not lose the others
            errors[name] = f"{err.__class__.__name__}: {err}"
            log(f"{name}: FAILED {errors[name]}\n{traceback.format_exc(limit=3)}")
    if args.profile:
        details["profile"] = profile_training()
    details["errors"] = errors
    details["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    details["seconds"] = round(time.perf_counter() - started, 1)
    summary = summarize(details)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stamp}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps({"summary": summary, **details}, indent=2, default=str) + "\n")
    log(f"results: {path} ({details['seconds']}s)")
    print(json.dumps({**summary, "results_file": str(path), "seconds": details["seconds"]}))


if __name__ == "__main__":
    main()
