"""Phase-1 epoch time with the frozen-feature cache vs without, measured side by side.

Without the cache, every phase-1 epoch runs the frozen Xception backbone on every image; with
it, the backbone runs once (the one-off extraction) and each epoch trains only the head on
pooled features. Prints the per-epoch ratio cached / uncached (goal: <= 0.05) and the
break-even including the extraction.

    python benchmarks/finetune_cache.py [--quick] [--size 128] [--images 256] [--json]
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
from triptych.training.feature_cache import extract, feature_extractor, head_model  # noqa: E402
from triptych.training.trainer import without_autotune_wait  # noqa: E402


def timed_epoch(model: keras.Model, dataset) -> float:
    started = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="128 images")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (seed: 299)")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    count = 128 if args.quick else args.images
    result = measure(count, args.size, args.batch_size)
    if not args.json:
        print(
            f"phase-1 epoch on {count} images at {args.size}px: uncached {result['uncached_epoch_s']:.2f}s, "
            f"cached {result['cached_epoch_s']:.4f}s (ratio {result['finetune_cached_vs_uncached_epoch']:.4f}); "
            f"one-off extraction {result['extraction_s']:.2f}s"
        )
    print(json.dumps(result))


def measure(count: int, size: int, batch_size: int) -> dict:
    """Phase-1 epoch seconds uncached vs cached for ``count`` random images (also used by benchmarks/run.py)."""
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (count, size, size, 3)).astype("float32")
    labels = keras.utils.to_categorical(rng.integers(0, 3, count), 3)
    # Without autotuning: else every fit's end waits for its thread (timings snap to 10 ms x (2^k - 1)).
    images_ds = without_autotune_wait(tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size))

    # Timing does not depend on the weights' values, so random weights keep this offline.
    model = build("xception", 3, (size, size, 3), weights=None)
    model.get_layer("base").trainable = False
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    timed_epoch(model, images_ds.take(1))  # trace
    uncached = timed_epoch(model, images_ds)

    started = time.perf_counter()
    features, feature_labels = extract(feature_extractor(model), [images_ds])
    extraction = time.perf_counter() - started
    head = head_model(model, features.shape[1])
    head.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    features_ds = without_autotune_wait(tf.data.Dataset.from_tensor_slices((features, feature_labels)).batch(batch_size))
    timed_epoch(head, features_ds.take(1))  # trace
    cached = np.median([timed_epoch(head, features_ds) for _ in range(5)])

    result = {
        "benchmark": "finetune_cache",
        "model": "xception",
        "image_size": size,
        "images": count,
        "uncached_epoch_s": round(uncached, 3),
        "cached_epoch_s": round(float(cached), 4),
        "extraction_s": round(extraction, 3),
        "finetune_cached_vs_uncached_epoch": round(float(cached / uncached), 5),
        "cached_10_epochs_incl_extraction_vs_uncached": round(float((extraction + 10 * cached) / (10 * uncached)), 4),
    }
    return result


if __name__ == "__main__":
    main()
