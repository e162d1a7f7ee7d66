"""Stratified, seeded subsets and train/val/test splits.

The test split is fixed before anything else happens and is never used for training or
model selection; validation is carved from the training data only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from triptych.data.sources import DataSource, Examples
from triptych.errors import TriptychError


@dataclass(frozen=True)
class Splits:
    class_names: tuple[str, ...]
    train: Examples
    val: Examples
    test: Examples


def stratified_subset(examples: Examples, per_class: int | None, seed: int) -> Examples:
    """At most ``per_class`` examples of each class, chosen at random with ``seed``."""
    if per_class is None:
        return examples
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(examples.labels):
        members = np.flatnonzero(examples.labels == label)
        keep.append(rng.permutation(members)[:per_class])
    return examples.take(np.sort(np.concatenate(keep)))


def _stratified_split(examples: Examples, fraction: float, seed: int, what: str) -> tuple[Examples, Examples]:
    indices = np.arange(len(examples))
    try:
        rest, held_out = train_test_split(
            indices, test_size=fraction, stratify=examples.labels, random_state=seed, shuffle=True
        )
    except ValueError as err:  # too few images per class for the requested fraction
        raise TriptychError(f"cannot carve a {fraction:.0%} {what} split: {err}") from err
    return examples.take(np.sort(rest)), examples.take(np.sort(held_out))


def make_splits(
    source: DataSource,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
) -> Splits:
    """Fix the test split first (given, or carved from the data), then subset and carve validation."""
    if source.test is not None:
        train_pool, test = source.train, source.test
    else:
        train_pool, test = _stratified_split(source.train, test_fraction, seed, "test")
    test = stratified_subset(test, test_per_class, seed)
    train_pool = stratified_subset(train_pool, train_per_class, seed)
    train, val = _stratified_split(train_pool, val_fraction, seed, "validation")
    return Splits(class_names=source.class_names, train=train, val=val, test=test)


def split_table(splits: Splits) -> list[dict[str, object]]:
    """Rows for ``split.csv``: which example went where, so every model sees the same test images."""
    rows = []
    for name in ("train", "val", "test"):
        examples: Examples = getattr(splits, name)
        rows.extend(
            {"split": name, "id": str(i), "label": splits.class_names[int(y)]}
            for i, y in zip(examples.ids, examples.labels)
        )
    return rows
