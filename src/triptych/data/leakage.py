"""Leakage between splits: the same picture in train and in val/test inflates test accuracy.

``data.duplicates`` decides what happens to near-duplicate images that cross the splits of a
folder dataset: ``refuse`` (stop before training, naming a pair), ``drop`` (remove the later
copy from val/test; train keeps its images) or ``allow``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

import numpy as np

from triptych.cache import cache_dir
from triptych.data.audit import cross_split_duplicates
from triptych.data.splits import Splits
from triptych.errors import TriptychError

SPLIT_ORDER = ("train", "val", "test")
# The perceptual hashes, remembered under $TRIPTYCH_CACHE by file path, size and mtime: each experiment
# runs in its own process, and hashing WikiArt's 4,500 paintings took ~3.8 s of every experiment's start.
HASH_CACHE_FILE = "image-hashes.json"


def guard_cross_split_duplicates(
    splits: Splits, policy: Literal["refuse", "drop", "allow"], dataset: str, train_pool: Sequence[str] | None = None
) -> tuple[Splits, int]:
    """Apply ``policy`` to the near-duplicates across ``splits``; returns the splits to use and
    how many images were dropped from val/test.

    ``train_pool``: every image train and val were drawn from (a subset such as train_per_class
    uses some of them). ``drop`` then compares val and test with all of them, so which test images
    are dropped depends on the split only, not on the subset: models trained on different subsets
    of one split keep the same test images (paired comparisons need that)."""
    if policy == "allow":
        return splits, 0
    ids = {name: list(getattr(splits, name).ids) for name in SPLIT_ORDER}
    if policy == "drop" and train_pool is not None:
        held_out = {str(p) for p in ids["val"]}
        ids["train"] = [p for p in train_pool if str(p) not in held_out]
    pairs = cross_split_duplicates(ids, cache_file=cache_dir() / HASH_CACHE_FILE)
    if not pairs:
        return splits, 0
    if policy == "refuse":
        first = pairs[0]
        raise TriptychError(
            f"{len(pairs)} near-duplicate image pair(s) cross the train/val/test splits of {dataset} "
            f"(e.g. {first[0]} ~ {first[1]}); set data.duplicates: drop (removes them from val/test) or allow"
        )
    return drop_duplicates(splits, pairs)


def drop_duplicates(splits: Splits, pairs: list[tuple[str, str, int]]) -> tuple[Splits, int]:
    """Remove from val and test every image that nearly duplicates an image of an earlier split."""
    rank = {name: k for k, name in enumerate(SPLIT_ORDER)}
    where = {str(path): name for name in SPLIT_ORDER for path in getattr(splits, name).ids}
    drop = set()
    for a, b, *_ in pairs:
        later = max((a, b), key=lambda p: rank[where.get(str(p), "train")])
        if where.get(str(later)) != "train":
            drop.add(str(later))
    kept = {}
    for name in ("val", "test"):
        examples = getattr(splits, name)
        kept[name] = examples.take(np.flatnonzero([str(p) not in drop for p in examples.ids]))
    return replace(splits, **kept), len(drop)
