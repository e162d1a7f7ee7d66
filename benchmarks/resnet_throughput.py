"""Training throughput of our from-scratch ResNet-50 vs keras.applications.ResNet50, side by side.

Both models get the same synthetic batches (no input pipeline cost), the same optimizer and
loss, and are timed in alternating rounds in one process, so machine noise hits both alike.
Prints images/s for each and the ratio ours / keras.applications (goal: >= 1.0).

    python benchmarks/resnet_throughput.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from triptych.models import build  # noqa: E402
from triptych.training.trainer import without_autotune_wait  # noqa: E402


def make_models(size: int, num_classes: int = 10) -> dict[str, keras.Model]:
    return {
        "triptych": build("resnet50", num_classes, (size, size, 3), stem="imagenet"),
        "keras.applications": keras.applications.ResNet50(weights=None, input_shape=(size, size, 3), classes=num_classes),
    }


def images_per_second(model: keras.Model, size: int, batch: int, steps: int) -> float:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, size, size, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 10, batch), 10)
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    # Without this, fit's end waits for tf.data's autotune thread: timings snap to 10 ms x (2^k - 1).
    data = without_autotune_wait(data)
    started = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    return batch * steps / (time.perf_counter() - started)


def measure(size: int, batch: int, steps: int, rounds: int) -> dict[str, float]:
    models = make_models(size)
    for model in models.values():
        model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "categorical_crossentropy")
        images_per_second(model, size, batch, 1)  # trace and warm up
    samples: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            samples[name].append(images_per_second(model, size, batch, steps))
    result = {f"{name}_img_per_s": float(np.median(values)) for name, values in samples.items()}
    result["ratio"] = result["triptych_img_per_s"] / result["keras.applications_img_per_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    parser.add_argument("--json", action="store_true", help="print only the JSON result line")
    args = parser.parse_args()
    steps, rounds = (2, 2) if args.quick else (4, 3)
    results = {}
    for size, batch in ((224, 16), (32, 64)):
        result = measure(size, batch, steps if size == 224 else steps * 3, rounds)
        results[f"{size}x{size}_batch{batch}"] = result
        if not args.json:
            print(
                f"ResNet-50 training {size}x{size} batch {batch}: triptych {result['triptych_img_per_s']:.2f} img/s, "
                f"keras.applications {result['keras.applications_img_per_s']:.2f} img/s, ratio {result['ratio']:.3f}",
                flush=True,
            )
    print(json.dumps({"benchmark": "resnet_throughput", "threads": os.cpu_count(), **results}))


if __name__ == "__main__":
    main()
