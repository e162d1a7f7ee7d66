"""Training throughput of our from-scratch ResNet-50 vs keras.applications.ResNet50, side by side.

Both models get the same synthetic batches (no input pipeline cost), the same optimizer and
loss, the same warm-up, and are timed in alternating rounds (timing.alternate) in one process,
so machine noise hits both alike. Ours is built with ``keras_compat=True`` (keras.applications'
layout: stride on the first 1x1 conv, conv biases), so both sides do the same multiply-adds (the
v1.5 default does ~6% more), and with ``fused_bn`` left to ``auto``: fused BatchNorm where it is
measured faster on this machine (triptych.models.fused_batchnorm), as a user's run gets it. Prints the ratio ours / keras.applications in images per
wall-clock second (the headline, median of the rounds; goal >= 1.0) and per CPU second, with the
per-round spread, the load average and the CPU flags.

    python benchmarks/resnet_throughput.py [--quick] [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from dataclasses import asdict

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import timing  # noqa: E402

from triptych.models import build  # noqa: E402
from triptych.models.fused_batchnorm import resolve_fused_bn  # noqa: E402
from triptych.training.trainer import without_autotune_wait  # noqa: E402

OURS, THEIRS = "triptych", "keras.applications"


def ours(size: int, num_classes: int = 10) -> keras.Model:
    """Our ResNet-50 in keras.applications' layout (the same work as theirs), fused_bn: auto."""
    return build("resnet50", num_classes, (size, size, 3), stem="imagenet", keras_compat=True)


def fused_bn_choice() -> dict:
    """What ``fused_bn: auto`` chose for :func:`ours` on this machine, and why."""
    return asdict(resolve_fused_bn("auto"))


def make_models(size: int, num_classes: int = 10) -> dict[str, keras.Model]:
    """Both ResNet-50s, compiled with the same optimizer and loss."""
    models = {
        OURS: ours(size, num_classes),
        THEIRS: keras.applications.ResNet50(weights=None, input_shape=(size, size, 3), classes=num_classes),
    }
    for model in models.values():
        model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "categorical_crossentropy")
    return models


def synthetic_batches(size: int, batch: int, num_classes: int = 10) -> tf.data.Dataset:
    """One fixed random batch, repeated: no input-pipeline cost in the timing."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, size, size, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, num_classes, batch), num_classes)
    # Without this, fit's end waits for tf.data's autotune thread: timings snap to 10 ms x (2^k - 1).
    return without_autotune_wait(tf.data.Dataset.from_tensors((x, y)).repeat())


def train_steps(model: keras.Model, data: tf.data.Dataset, steps: int) -> None:
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)


def compare(models: dict[str, keras.Model], size: int, batch: int, steps: int, rounds: int) -> timing.Comparison:
    """``steps`` training steps of each model per sample, after one identical warm-up call each."""
    data = synthetic_batches(size, batch)
    sides = {name: functools.partial(train_steps, model, data, steps) for name, model in models.items()}
    return timing.alternate(sides, rounds, warmup=1)


def throughput_entry(comparison: timing.Comparison, size: int, batch: int, steps: int) -> dict:
    """Ours / keras.applications in images per second = their median seconds / ours (same work)."""
    images = batch * steps
    report = comparison.report(THEIRS, OURS)
    report["ratio_definition"] = f"images/s ours / keras.applications = {report['ratio_definition']}"
    return {
        "image_size": size,
        "batch": batch,
        "steps": steps,
        "triptych_img_per_s": round(images / comparison.median(OURS), 3),
        "keras_applications_img_per_s": round(images / comparison.median(THEIRS), 3),
        "triptych_img_per_cpu_s": round(images / comparison.median(OURS, "cpu"), 3),
        "keras_applications_img_per_cpu_s": round(images / comparison.median(THEIRS, "cpu"), 3),
        "ratio": report["ratio_wall"],
        "ratio_cpu_time": report["ratio_cpu"],
        **report,
    }


def describe(entry: dict) -> str:
    return (
        f"ResNet-50 training {entry['image_size']}px batch {entry['batch']} x {entry['steps']} step(s): ours "
        f"{entry['triptych_img_per_s']:.2f} img/s, keras.applications {entry['keras_applications_img_per_s']:.2f} img/s; "
        f"ratio {entry['ratio']:.3f} (median of {entry['rounds']} alternating rounds, per round "
        f"{entry['ratio_wall_round_min']:.3f}-{entry['ratio_wall_round_max']:.3f}), CPU-time ratio "
        f"{entry['ratio_cpu_time']:.3f}; load {entry['load_average_before'][0]} -> {entry['load_average_after'][0]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per ratio (>= 5 for a headline)")
    parser.add_argument("--json", action="store_true", help="print only the JSON result line")
    args = parser.parse_args()
    steps = 2 if args.quick else 4
    results = {}
    for size, batch, size_steps in ((224, 16, steps), (64, 32, steps * 2)):
        entry = throughput_entry(compare(make_models(size), size, batch, size_steps, args.rounds), size, batch, size_steps)
        results[f"{size}x{size}_batch{batch}"] = entry
        keras.backend.clear_session()
        if not args.json:
            print(describe(entry), flush=True)
    resolution = {"quick": args.quick, "rounds": args.rounds, "threads": os.cpu_count(), "layout": "keras_compat",
                  "fused_bn": fused_bn_choice(), **timing.cpu_resolution()}
    print(json.dumps({"benchmark": "resnet_throughput", "resolution": resolution, **results}))


if __name__ == "__main__":
    main()
