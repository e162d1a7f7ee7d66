"""Fine-tuning on caches vs without, side by side (timing.alternate): three headline ratios, and
the head-phase ratio kept as a secondary figure.

- ``finetune_recipe_cached_vs_uncached`` (goal <= 0.3): the demo's whole two-phase Xception recipe
  (configs/demo.yaml: epochs, views, image size, batch, unfrozen blocks), every cache build
  included: (head feature cache build + N1 head epochs on it + trunk cache build of K views and
  the clean validation view + N2 fine-tune epochs on it) / (N1 frozen-backbone epochs + N2
  fine-tune epochs on images), both sides validating every epoch. The uncached side runs
  min(N, 2) epochs of each phase per round (compile and tracing included) and adds N - 2 more of
  its last epoch's time (every uncached epoch of a phase is the same full pass).
- ``finetune_trunk_cached_vs_full_epoch_<backbone>``: one phase-2 epoch on the trunk cache / one
  normal fine-tune epoch, same images and unfrozen blocks, at 224 px: Xception with block14 open
  (goal <= 0.2), DenseNet-121 with its last two dense layers open (goal <= 0.05). Per epoch: the
  trunk cache build is left out (it is in the recipe ratio). Beside each: the largest change in
  the top's probabilities from storing the trunk tensors in float16 (on these synthetic inputs).
- secondary, never the headline: ``finetune_cached_vs_uncached_epoch`` (a head epoch on pooled
  features / an uncached head epoch) and ``cached_vs_uncached_incl_cache_build`` (phase 1 only).

Synthetic in-memory images and random weights (timing does not depend on the weights' values);
no JPEG decoding or augmentation ops on either side (the K views are K passes over the images).

    python benchmarks/finetune_cache.py [--quick] [--images 256] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
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
from triptych.models.pretrained import unfreeze  # noqa: E402
from triptych.training.feature_cache import CacheKey, cached_features, extract, feature_extractor, head_model  # noqa: E402
from triptych.training.phases import trunk_views  # noqa: E402
from triptych.training.trainer import without_autotune_wait  # noqa: E402
from triptych.training.trunk_cache import TrunkKey, cached_trunk, split_model, trunk_dataset  # noqa: E402

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
        "fine_tune_epochs": experiment.training.fine_tune.epochs,
        "trunk_views": trunk_views(experiment),
        "unfreeze_blocks": experiment.training.fine_tune.unfreeze_blocks,
    }


def batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> tf.data.Dataset:
    # Without autotuning: else every fit's end waits for its thread (timings snap to 10 ms x (2^k - 1)).
    return without_autotune_wait(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size))


def synthetic(count: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, (count, size, size, 3)).astype("float32"),
            keras.utils.to_categorical(rng.integers(0, 3, count), 3))


def _trunk_key(name: str, split, views: int, tag: str) -> TrunkKey:
    return TrunkKey(name, "random", "bench", 0, "none", tuple(split.tensors), tag, views, "none", 0, "fp32")


# Phase 2's unfrozen blocks for each backbone: Xception's last block, DenseNet-121's last two dense layers.
TRUNK_BLOCKS = {"xception": ["block14"], "densenet121": ["conv5_block15", "conv5_block16"]}


def trunk_epoch(backbone: str, count: int, rounds: int, size: int = 224, batch_size: int = 32) -> dict:
    """One phase-2 epoch on the trunk cache vs one normal fine-tune epoch (same images, same blocks)."""
    blocks = TRUNK_BLOCKS[backbone]
    x, y = synthetic(count, size)
    images_ds = batches(x, y, batch_size)
    model = build(backbone, 3, (size, size, 3), weights=None)
    unfreeze(model, blocks)
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    split = split_model(model, blocks)
    split.top.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    with tempfile.TemporaryDirectory() as cache_dir:  # the memory maps live as long as it does
        arrays, _ = cached_trunk(_trunk_key(backbone, split, 1, "train"), split.trunk, [images_ds], count, Path(cache_dir))
        train = without_autotune_wait(trunk_dataset(arrays, batch_size, seed=0))
        comparison = timing.alternate(
            {"cached": lambda: split.top.fit(train, epochs=1, verbose=0),
             "full": lambda: model.fit(images_ds, epochs=1, verbose=0)}, rounds, warmup=1)
        storage = float16_effect(split, x[:batch_size])
    report = comparison.report("cached", "full")
    return {
        "backbone": backbone, "unfrozen": blocks, "image_size": size, "batch": batch_size, "images": count,
        "trunk_tensors": split.tensors, "trunk_shapes": [list(t.shape) for t in arrays.tensors],
        "ratio": report["ratio_wall"], "ratio_cpu_time": report["ratio_cpu"],
        "definition": "median seconds of a phase-2 epoch on the trunk cache / of a normal fine-tune epoch",
        "float16_storage_max_abs_prob_change": storage,
        "timing": report,
    }


def float16_effect(split, images: np.ndarray) -> float:
    """Largest change in the top's probabilities when its trunk inputs are rounded to float16."""
    trunk = split.trunk(images, training=False)
    trunk = trunk if isinstance(trunk, list) else [trunk]
    exact = split.top(trunk if len(trunk) > 1 else trunk[0], training=False).numpy()
    rounded = [tf.cast(tf.cast(t, tf.float16), tf.float32) for t in trunk]
    stored = split.top(rounded if len(rounded) > 1 else rounded[0], training=False).numpy()
    return float(np.abs(exact - stored).max())


class EpochSeconds(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._started)


def recipe_cached_vs_uncached(count: int, rounds: int, recipe: dict) -> dict:
    """The demo's whole two-phase Xception recipe with both caches (every build included) vs without."""
    size, batch_size, n1, n2, k1, k2, blocks = (recipe[k] for k in (
        "image_size", "batch_size", "epochs", "fine_tune_epochs", "cache_views", "trunk_views", "unfreeze_blocks"))
    count_val = max(count // 4, 1)
    images, val_images = (batches(*synthetic(n, size, seed), batch_size) for n, seed in ((count, 0), (count_val, 1)))
    model = build("xception", 3, (size, size, 3), weights=None)
    uncached_totals: list[float] = []

    def cached() -> None:
        with tempfile.TemporaryDirectory() as folder:  # empty: every round builds both caches
            cache = Path(folder)
            model.get_layer("base").trainable = False
            extractor = feature_extractor(model)
            head = head_model(model, extractor.output_shape[-1])
            head_key = CacheKey("xception", "random", size, "none", "bench", k1, "none", 0, "float32")
            f, l, _ = cached_features(head_key, lambda: extract(extractor, [images] * k1), cache)
            val_key = dataclasses.replace(head_key, views=1, data_fingerprint="val")
            vf, vl, _ = cached_features(val_key, lambda: extract(extractor, [val_images]), cache)
            head.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
            head.fit(batches(f, l, batch_size), validation_data=batches(vf, vl, batch_size), epochs=n1, verbose=0)
            unfreeze(model, blocks)
            split = split_model(model, blocks)
            train, _ = cached_trunk(_trunk_key("xception", split, k2, "train"), split.trunk, [images] * k2, count, cache)
            val, _ = cached_trunk(_trunk_key("xception", split, 1, "val"), split.trunk, [val_images], count_val, cache)
            split.top.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
            split.top.fit(without_autotune_wait(trunk_dataset(train, batch_size, seed=0)),
                          validation_data=without_autotune_wait(trunk_dataset(val, batch_size)), epochs=n2, verbose=0)

    def uncached() -> None:
        total = 0.0
        for epochs, open_blocks in ((n1, None), (n2, blocks)):
            model.get_layer("base").trainable = False
            if open_blocks:
                unfreeze(model, open_blocks)
            timer, started = EpochSeconds(), time.perf_counter()
            model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
            model.fit(images, validation_data=val_images, epochs=min(epochs, 2), callbacks=[timer], verbose=0)
            total += time.perf_counter() - started + (epochs - min(epochs, 2)) * timer.seconds[-1]
        uncached_totals.append(total)

    comparison = timing.alternate({"cached": cached, "uncached": uncached}, rounds, warmup=1)
    cached_s, uncached_s = float(np.median(comparison.samples("cached"))), float(np.median(uncached_totals[1:]))
    return {
        "ratio": round(cached_s / uncached_s, 5),
        "definition": f"(head cache build of {k1} view(s) + {n1} head epochs + trunk cache build of {k2} view(s) and val "
                      f"+ {n2} fine-tune epochs) / ({n1} + {n2} uncached epochs), each validating; medians of "
                      f"{rounds} alternating rounds; uncached: min(N, 2) epochs a phase timed, the rest extrapolated",
        "cached_s": round(cached_s, 3), "uncached_s": round(uncached_s, 3), "images": count, "val_images": count_val,
        "recipe": recipe, "uncached_round_totals_s": [round(t, 3) for t in uncached_totals[1:]],
        "timing": comparison.report("cached", "uncached"),
    }


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


def measure_all(count: int, rounds: int, settings: dict, trunk_size: int = 224, trunk_images: int | None = None) -> dict:
    """Every ratio of this file (also used by benchmarks/run.py): the headlines first."""
    recipe_result = recipe_cached_vs_uncached(count, rounds, settings)
    trunk = {name: trunk_epoch(name, trunk_images or count, rounds, size=trunk_size) for name in TRUNK_BLOCKS}
    head = measure(count, rounds, settings)
    return {
        "finetune_recipe_cached_vs_uncached": recipe_result["ratio"],
        **{f"finetune_trunk_cached_vs_full_epoch_{name}": t["ratio"] for name, t in trunk.items()},
        # Secondary, never the headline: a head epoch on pooled features / an uncached one (no cache build).
        "finetune_cached_vs_uncached_epoch": head["finetune_cached_vs_uncached_epoch"],
        "recipe": recipe_result,
        "trunk": trunk,
        "head_phase": head,
    }


def describe_all(result: dict) -> str:
    lines = [f"whole two-phase recipe, cached / uncached = {result['finetune_recipe_cached_vs_uncached']:.4f} "
             f"({result['recipe']['definition']})"]
    for name, t in result["trunk"].items():
        lines.append(f"phase-2 epoch, {name} {t['image_size']}px {'+'.join(t['unfrozen'])}: trunk cache / full = "
                     f"{t['ratio']:.4f} (CPU {t['ratio_cpu_time']:.4f}); float16 storage changes probabilities by "
                     f"<= {t['float16_storage_max_abs_prob_change']:.2e}")
    lines.append("secondary: " + describe(result["head_phase"]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="128 images")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (>= 5 for a headline)")
    parser.add_argument("--image-size", type=int, help="override the recipe's image size (smoke tests)")
    parser.add_argument("--trunk-image-size", type=int, default=224, help="the per-epoch trunk ratios' size")
    parser.add_argument("--epochs", type=int, help="override the recipe's head epochs (smoke tests)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    settings = recipe()
    if args.image_size:
        settings["image_size"] = args.image_size
    if args.epochs:
        settings["epochs"] = args.epochs
    result = measure_all(128 if args.quick else args.images, args.rounds, settings, args.trunk_image_size)
    result["resolution"] = {"quick": args.quick, "rounds": args.rounds, **timing.cpu_resolution()}
    if not args.json:
        print(describe_all(result), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
