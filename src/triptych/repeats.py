"""Repeated trainings of one experiment (``repeats: N``): one run directory per seed.

An experiment with ``repeats: 3`` and the config's ``seed: 0`` becomes three experiments,
``<name>@s0``, ``<name>@s1`` and ``<name>@s2``, trained with seeds 0, 1, 2 (initialisation,
shuffling, augmentation). Each is an ordinary run directory next to the others, so
``triptych report`` finds them, ``--resume`` skips the finished ones and continues the rest,
and the report groups them back by the name before ``@s`` (:func:`repeat_of`).

The split: every repeat trains and tests on the split of the config's seed (or
``data.split_seed``), so the repeats differ only in training randomness; with ``resplit: true``
each seed also draws its own stratified train/val/test split. Either way the expanded
experiment's ``data.split_seed`` says which split it used, so its ``config.yaml`` reproduces it alone.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import re

from triptych.config import Config, ExperimentConfig

REPEAT_MARK = "@s"
_REPEAT_NAME = re.compile(r"^(?P<base>.+)@s(?P<seed>[0-9]+)$")


def repeat_name(name: str, seed: int) -> str:
    """The run directory name of ``name``'s repeat with ``seed``."""
    return f"{name}{REPEAT_MARK}{seed}"


def repeat_of(name: str) -> tuple[str, int] | None:
    """``(experiment, seed)`` for a repeat's run directory name, ``None`` for an ordinary one."""
    match = _REPEAT_NAME.match(name)
    return (match["base"], int(match["seed"])) if match else None


def expand_repeats(config: Config) -> list[tuple[ExperimentConfig, int]]:
    """Every run of ``config`` as ``(experiment, seed)``, in order; an experiment without
    repeats is itself with the config's seed (unchanged)."""
    runs = []
    for exp in config.experiments:
        if exp.repeats == 1:
            runs.append((exp, config.seed))
            continue
        fixed_split = exp.data.split_seed if exp.data.split_seed is not None else config.seed
        for seed in range(config.seed, config.seed + exp.repeats):
            data = exp.data.model_copy(update={"split_seed": seed if exp.resplit else fixed_split})
            one = exp.model_copy(update={"name": repeat_name(exp.name, seed), "data": data, "repeats": 1})
            runs.append((one, seed))
    return runs
