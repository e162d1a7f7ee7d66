"""Phase 1 of the demo's Xception recipe with the frozen-feature cache vs without, side by side.

Without the cache, every phase-1 epoch runs the frozen Xception backbone on every image; with
it, the backbone runs once (the cache build: extraction + writing the .npz, as the trainer does)
and each epoch trains only the head on pooled features. The headline is the whole phase:

    (cache build + N head epochs on the cache) / (N uncached epochs)

with N, the image size and the batch read from configs/demo.yaml's Xception experiment, each the
median of alternating rounds (timing.alternate). Each round times one uncached epoch by default
(every uncached epoch is the same full backbone pass; ``--uncached-epochs N`` times all N).
The per-epoch ratio (head epoch on the cache / uncached epoch) is secondary: it leaves the cache
build out, and says so. Left out of both sides alike: validation and JPEG decoding (synthetic
in-memory images, random weights: timing does not depend on the weights' values).

    python benchmarks/finetune_cache.py [--quick] [--images 256] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import timing  # noqa: E402

from triptych.config import load_config  # noqa: E402
from triptych.models import build  # noqa: E402
from triptych.training.feature_cache import CacheKey, cached_features, extract, feature_extractor, head_model  # noqa: E402
from triptych.training.trainer import without_autotune_wait  # noqa: E402

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def recipe(config: Path = DEMO_CONFIG) -> dict:
    """The Xception experiment's phase-1 settings: epochs, cache views, image size, batch size."""
    experiment = next(e for e in load_config(config).experiments if e.model.name == "xception")
    return {
        "config": str(config),
        "experiment": experiment.name,
        "epochs": experiment.training.epochs,
        "cache_views": experiment.training.cache_views,
        "image_size": experiment.data.image_size,
        "batch_size": experiment.data.batch_size,
    }


def batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> tf.data.Dataset:
    # Without autotuning: else every fit's end waits for its thread (timings snap to 10 ms x (2^k - 1)).
    return without_autotune_wait(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size))


def measure(count: int, rounds: int, recipe: dict, uncached_epochs: int = 1) -> dict:
    """Cached vs uncached phase 1 on ``count`` random images (also used by benchmarks/run.py)."""
    size, batch_size, epochs, views = (recipe[k] for k in ("image_size", "batch_size", "epochs", "cache_views"))
    rng = np.random.default_rng(0)
    images_ds = batches(rng.uniform(-1, 1, (count, size, size, 3)).astype("float32"),
                        keras.utils.to_categorical(rng.integers(0, 3, count), 3), batch_size)
    model = build("xception", 3, (size, size, 3), weights=None)
    model.get_layer("base").trainable = False
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    extractor = feature_extractor(model)
    head = head_model(model, extractor.output_shape[-1])
    head.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    key = CacheKey("xception", "random", size, "none", f"synthetic:{count}", views, "none", 0, "float32")
    split: dict[str, list[float]] = {"build": [], "head": []}

    def cached() -> None:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as cache_dir:  # empty: every call builds the cache
            features, labels, _ = cached_features(key, lambda: extract(extractor, [images_ds] * views), Path(cache_dir))
        built = time.perf_counter()
        head.fit(batches(features, labels, batch_size), epochs=epochs, verbose=0)
        split["build"].append(built - started)
        split["head"].append(time.perf_counter() - built)

    def uncached() -> None:
        model.fit(images_ds, epochs=uncached_epochs, verbose=0)

    comparison = timing.alternate({"cached": cached, "uncached": uncached}, rounds, warmup=1)
    build_s, head_s = (float(np.median(split[k][1:])) for k in ("build", "head"))  # [0] is the warm-up
    return summarize(comparison, count, recipe, uncached_epochs, build_s, head_s)


def summarize(comparison: timing.Comparison, count: int, recipe: dict, uncached_epochs: int,
              build_s: float, head_s: float) -> dict:
    epochs = recipe["epochs"]
    scale = uncached_epochs / epochs  # the cached side is the whole phase: N epochs' worth
    report = comparison.report("cached", "uncached")
    report["ratio_definition"] += f" (per round's work; the headline scales it by {uncached_epochs}/{epochs})"
    uncached_epoch_s = comparison.median("uncached") / uncached_epochs
    return {
        "benchmark": "finetune_cache",
        "model": "xception",
        "image_size": recipe["image_size"],
        "batch": recipe["batch_size"],
        "images": count,
        "recipe": recipe,
        "cached_vs_uncached_incl_cache_build": round(report["ratio_wall"] * scale, 5),
        "cached_vs_uncached_incl_cache_build_cpu_time": round(report["ratio_cpu"] * scale, 5),
        "cached_vs_uncached_incl_cache_build_round_min": round(report["ratio_wall_round_min"] * scale, 5),
        "cached_vs_uncached_incl_cache_build_round_max": round(report["ratio_wall_round_max"] * scale, 5),
        "definition": f"(cache build + {epochs} head epochs) / ({epochs} uncached epochs), medians of alternating rounds; "
                      f"uncached side: {epochs} x the median of {uncached_epochs} timed epoch(s) per round",
        # Secondary, never the headline: it leaves the cache build out.
        "finetune_cached_vs_uncached_epoch": round(head_s / epochs / uncached_epoch_s, 5),
        "per_epoch_ratio_leaves_out": f"the cache build, median {build_s:.2f} s = {build_s / uncached_epoch_s:.2f} uncached epochs",
        "uncached_epoch_s": round(uncached_epoch_s, 3),
        "cached_epoch_s": round(head_s / epochs, 4),
        "extraction_s": round(build_s, 3),
        "uncached_epochs_timed_per_round": uncached_epochs,
        "timing": report,
    }


def describe(result: dict) -> str:
    epochs = result["recipe"]["epochs"]
    return (
        f"phase 1, Xception {result['image_size']}px, {result['images']} images, {epochs} epochs: cached (build + "
        f"{epochs} head epochs) / uncached = {result['cached_vs_uncached_incl_cache_build']:.4f} (median of "
        f"{result['timing']['rounds']} alternating rounds, per round {result['cached_vs_uncached_incl_cache_build_round_min']:.4f}"
        f"-{result['cached_vs_uncached_incl_cache_build_round_max']:.4f}; CPU time "
        f"{result['cached_vs_uncached_incl_cache_build_cpu_time']:.4f}; load {result['timing']['load_average_before'][0]} -> "
        f"{result['timing']['load_average_after'][0]}); per epoch {result['finetune_cached_vs_uncached_epoch']:.4f} "
        f"(leaves out {result['per_epoch_ratio_leaves_out']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="128 images")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (>= 5 for a headline)")
    parser.add_argument("--uncached-epochs", type=int, default=1, help="uncached epochs timed per round")
    parser.add_argument("--image-size", type=int, help="override the recipe's image size (smoke tests)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    settings = recipe()
    if args.image_size:
        settings["image_size"] = args.image_size
    result = measure(128 if args.quick else args.images, args.rounds, settings, args.uncached_epochs)
    result["resolution"] = {"quick": args.quick, "rounds": args.rounds, **timing.cpu_resolution()}
    if not args.json:
        print(describe(result), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
