"""Checks made before anything trains: the experiments of a config, and the output directory.

A mistake in the fifth experiment must not surface after the first four have trained for an
hour, and a notebook user gets the same refusals as the CLI. Nothing here imports TensorFlow,
so ``triptych run`` refuses a bad config at once.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from triptych.budget import format_budget, parse_budget
from triptych.config import Config, ExperimentConfig
from triptych.errors import InvalidArgumentError, MissingFileError, TriptychError
from triptych.models.registry import ModelSpec, get_spec
from triptych.rundir import experiment_dirs

# Families built as one network (no separate "base" backbone to freeze or fine-tune).
ONE_NETWORK_FAMILIES = ("resnet",)


def validate_experiments(config: Config) -> None:
    """Raise on the first experiment that cannot run as configured."""
    for exp in config.experiments:
        spec = get_spec(exp.model.name)
        _check_options(exp, spec)
        _check_files(exp, spec)
        _check_phases(exp, spec)
        _check_time_budget(exp, exp.training.time_budget)
        _check_class_weight(exp)


def runs_in_one_process(config: Config) -> bool:
    """Whether the config's experiments all run in the calling process rather than one process each:
    under ``strategy: multiworker``. TF_CONFIG fixes each worker's port, and a worker that ends an
    experiment first would start the next one's process while another worker's previous process still
    serves that port (e.g. drawing Grad-CAM, which needs no collective): the new strategy would then join
    a cluster of mixed incarnations, refused or hung. One process keeps one strategy for every experiment."""
    return any(exp.training.strategy == "multiworker" for exp in config.experiments)


def check_budget(config: Config, budget: str | float | None) -> float | None:
    """A whole config's budget in seconds (``budget``, e.g. '10m', else ``config.time_budget``; None
    without either), refused where it cannot apply."""
    key = "budget" if budget is not None else "time_budget"
    seconds = parse_budget(budget if budget is not None else config.time_budget)
    if seconds is not None:
        for exp in config.experiments:
            _check_time_budget(exp, seconds, key=key)
        _check_own_budgets_fit(config, seconds, key)
    return seconds


def _check_own_budgets_fit(config: Config, seconds: float, key: str) -> None:
    """The experiments' own training.time_budget are slices of the whole: they must leave room for the rest."""
    own = [parse_budget(exp.training.time_budget) for exp in config.experiments for _ in range(exp.repeats)]
    kept = sum(s for s in own if s is not None)
    if kept > seconds or (kept == seconds and None in own):
        raise InvalidArgumentError(
            f"the experiments' own training.time_budget add up to {format_budget(kept)}, which leaves nothing of "
            f"{key} {format_budget(seconds)} for the others; raise {key} or lower those time_budget values"
        )


def _check_time_budget(exp: ExperimentConfig, budget: str | float | None, key: str = "training.time_budget") -> None:
    # Each worker would measure its own speed and could choose other epochs than the rest: they would hang.
    if budget is not None and exp.training.strategy == "multiworker":
        raise InvalidArgumentError(
            f"experiment {exp.name}: {key} cannot be used with training.strategy multiworker (each worker would "
            "choose its own epochs); set training.epochs instead"
        )


def _check_options(exp: ExperimentConfig, spec: ModelSpec) -> None:
    unknown = sorted(set(exp.model.options) - set(spec.options))
    if unknown:
        raise InvalidArgumentError(
            f"experiment {exp.name}: unknown model option(s) {', '.join(unknown)} for {spec.name}; "
            f"valid: {', '.join(spec.options) or 'none'}"
        )


def _check_files(exp: ExperimentConfig, spec: ModelSpec) -> None:
    if exp.data.dataset == "folder" and not exp.data.fallback and not expand(exp.data.path).is_dir():
        raise MissingFileError(f"experiment {exp.name}: data.path {exp.data.path} is not a directory")
    candidates = weight_candidates(exp.model.weights)
    if len(candidates) == 1 and candidates[0] not in (None, *spec.pretrained) and not expand(candidates[0]).is_file():
        raise MissingFileError(f"experiment {exp.name}: weights file {candidates[0]} not found")


def _check_phases(exp: ExperimentConfig, spec: ModelSpec) -> None:
    """Every freeze_base / fine_tune combination either runs as written or is refused here."""
    training = exp.training
    if spec.family in ONE_NETWORK_FAMILIES:
        if training.fine_tune:
            raise InvalidArgumentError(
                f"experiment {exp.name}: training.fine_tune needs a pretrained backbone (xception, densenet121); "
                f"{spec.name} trains as one network"
            )
        if training.freeze_base is True:
            raise InvalidArgumentError(
                f"experiment {exp.name}: training.freeze_base: true needs a separate backbone (xception, densenet121); "
                f"{spec.name} trains as one network: use freeze_base: auto or false"
            )
    if training.fine_tune and (training.fine_tune.cache_views or 1) > 1:
        _check_trunk_views(exp)
    if training.freeze_base is False and training.fine_tune:
        raise InvalidArgumentError(
            f"experiment {exp.name}: training.fine_tune follows a frozen-backbone phase, but training.freeze_base "
            "is false (the backbone trains end to end); use freeze_base: auto or true, or drop fine_tune"
        )


def _check_class_weight(exp: ExperimentConfig) -> None:
    augment = exp.data.augment
    if exp.training.class_weight and (augment.mixup is not None or augment.cutmix is not None):
        # Keras would weight a mixed image by its larger label's class alone, silently.
        raise InvalidArgumentError(
            f"experiment {exp.name}: training.class_weight weights each image by its class, but data.augment.mixup / "
            "cutmix give an image two classes; use class_weight: null or turn mixup and cutmix off"
        )


def _check_trunk_views(exp: ExperimentConfig) -> None:
    """K augmented views of the trunk cache need the cache, and an augmentation that varies them."""
    ft, augment = exp.training.fine_tune, exp.data.augment
    missing = "fine_tune.trunk_cache is false" if ft.trunk_cache is False else (
        None if augment.varies_images else "data.augment augments nothing")
    if missing:
        raise InvalidArgumentError(
            f"experiment {exp.name}: training.fine_tune.cache_views: {ft.cache_views} asks for augmented views "
            f"in the trunk cache, but {missing}; use cache_views: 1 (or null)"
        )


def frozen_base_phase(exp: ExperimentConfig, spec: ModelSpec, weights: str | None) -> bool:
    """Whether phase 1 trains the head on a frozen backbone: as configured, or (auto) when a
    separate backbone starts from pretrained weights."""
    if exp.training.freeze_base != "auto":
        return exp.training.freeze_base
    return bool(weights) and spec.family not in ONE_NETWORK_FAMILIES


def expand(path: str) -> Path:
    """Config paths may use $VARS (e.g. $TRIPTYCH_MIRROR/wikiart) and ~."""
    return Path(os.path.expandvars(path)).expanduser()


def weight_candidates(weights: str | list | None) -> list[str | None]:
    """``model.weights`` as the list of candidates to try in order (None: random)."""
    items = weights if isinstance(weights, list) else [weights]
    return [None if item in (None, "random", "null") else item for item in items]


def prepare_output_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: an existing output directory needs ``resume`` or ``overwrite``."""
    if resume and overwrite:
        raise InvalidArgumentError("resume=True and overwrite=True contradict each other; pick one")
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if overwrite:
            if not experiment_dirs(out) and not (out / "report.html").exists():
                raise InvalidArgumentError(
                    f"{out} is not a triptych run directory; refusing to delete it with overwrite=True"
                )
            shutil.rmtree(out)
        elif not resume:
            raise InvalidArgumentError(
                f"output directory {out} already exists; pass resume=True to continue it or overwrite=True to replace it"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise TriptychError(f"cannot write to output directory {out}: {err.strerror or err}") from None
