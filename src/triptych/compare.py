"""Compare models on your own image folder in one call: audit, recipe, config, run, report.

``recipe_for_folder(folder, models)`` is the config ``triptych compare`` would run: one
experiment per model at its native input size, two-phase fine-tuning (head on frozen ImageNet
features, then the last block at a small learning rate) for backbones with pretrained weights,
training from scratch for the others. ``recipe_yaml`` writes it with every key commented and
the audit's findings on top (``triptych init``). ``compare_folder`` audits the folder, writes
``OUT/config.yaml``, runs it and writes the report (``triptych compare``).

A folder that cannot make a fair comparison is refused before anything trains: no images,
fewer than two classes, or a class with fewer than :data:`MIN_IMAGES_PER_CLASS` usable images.

``budget`` ('5m', '90s', '1h') sizes the recipe to finish in about that time on a small CPU
machine: smaller images, a per-class cap on the images used, and each model's share as its
``training.time_budget``, so that a measured warm-up chooses the epochs that fit (see
:func:`plan_for_budget`, the one place a budget turns into settings).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triptych.budget import parse_budget
from triptych.config import Config, apply_override, parse_config
from triptych.config_schema import commented_yaml
from triptych.data.audit import AuditReport, audit_folder
from triptych.errors import InvalidArgumentError, MissingFileError
from triptych.models import MODELS, get_spec

MIN_IMAGES_PER_CLASS = 10
IMBALANCE_WARNING_RATIO = 2.0  # largest class / smallest class
# Backbones we know how to fine-tune: their family -> the blocks phase 2 unfreezes.
FINE_TUNE_BLOCKS = {"xception": ["block14"], "densenet": ["conv5_block16", "conv5_block15"]}

Log = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """How big a recipe is: ``None`` means 'all the data' / 'the model's native size'."""

    seconds_per_model: float | None
    pretrained_size: int | None  # input size of fine-tuned backbones
    scratch_size: int | None  # input size of models trained from scratch
    train_per_class: int | None  # training + validation images per class
    test_per_class: int | None
    head_epochs: int  # phase 1 of a fine-tune (cheap: cached frozen features)
    fine_tune_epochs: int  # phase 2
    scratch_epochs: int


# (seconds per model up to, plan settings). Sized for a 2-core CPU, where a full-size fine-tune
# of ~4,000 images takes hours: small images and capped data keep a short budget honest. The
# first tier was measured: `triptych compare` on WikiArt, xception + resnet18, '5m': 2.6 CPU-minutes
# end to end (5 min 23 s wall on 2 cores shared with other jobs, load average 8). The other
# tiers are extrapolated from it, not measured.
_TIERS: tuple[tuple[float, dict[str, Any]], ...] = (
    (200, dict(pretrained_size=128, scratch_size=64, train_per_class=150, test_per_class=100, head_epochs=10,
               fine_tune_epochs=1, scratch_epochs=8)),
    (900, dict(pretrained_size=160, scratch_size=96, train_per_class=300, test_per_class=200, head_epochs=15,
               fine_tune_epochs=2, scratch_epochs=10)),
    (3600, dict(pretrained_size=224, scratch_size=128, train_per_class=1000, test_per_class=400, head_epochs=20,
                fine_tune_epochs=3, scratch_epochs=20)),
)
_UNLIMITED = dict(pretrained_size=None, scratch_size=None, train_per_class=None, test_per_class=None,
                  head_epochs=20, fine_tune_epochs=5, scratch_epochs=40)


def plan_for_budget(budget: str | float | None, n_models: int) -> Plan:
    """The one place a time budget becomes recipe settings (shared equally by the models)."""
    seconds = parse_budget(budget)
    if seconds is None:
        return Plan(None, **_UNLIMITED)
    per_model = seconds / max(n_models, 1)
    settings = next((tier for limit, tier in _TIERS if per_model <= limit), _UNLIMITED)
    return Plan(round(per_model, 1), **settings)


def parse_models(models: str | Sequence[str]) -> list[str]:
    """``'xception,resnet50'`` or a list -> registered model names, in order."""
    names = [m.strip() for m in (models.split(",") if isinstance(models, str) else models) if m.strip()]
    if not names:
        raise InvalidArgumentError("models is empty; name at least one, e.g. 'xception,resnet50' (see triptych models)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InvalidArgumentError(f"models names {', '.join(repeated)} more than once; name each model once")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise InvalidArgumentError(
            f"models: unknown model(s) {', '.join(map(repr, unknown))}; valid models: {', '.join(sorted(MODELS))}")
    return names


# --------------------------------------------------------------------------------------------
# The folder


def check_folder(folder: str | Path, *, progress: bool | None = None) -> AuditReport:
    """Audit ``folder`` and refuse it if it cannot make a fair comparison."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise MissingFileError(f"folder {root} does not exist or is not a folder (expected one subfolder of images per class)")
    report = audit_folder(root, progress=progress)
    refuse_unfit(report)
    return report


def refuse_unfit(report: AuditReport) -> None:
    """Raise InvalidArgumentError for a folder that cannot make a fair comparison."""
    root = report.root
    usable = usable_counts(report)
    if not report.files:
        raise InvalidArgumentError(f"folder {root} has no images (expected one subfolder of .jpg/.png images per class)")
    if len(usable) < 2:
        found = ", ".join(f"{c} ({n})" for c, n in usable.items()) or "none"
        raise InvalidArgumentError(
            f"folder {root} has {len(usable)} class folder(s) with images ({found}); a comparison needs at least 2 "
            "classes, one subfolder of images each")
    small = {c: n for c, n in usable.items() if n < MIN_IMAGES_PER_CLASS}
    if small:
        listed = ", ".join(f"{c} ({n})" for c, n in small.items())
        raise InvalidArgumentError(
            f"folder {root}: class(es) {listed} have fewer than {MIN_IMAGES_PER_CLASS} usable images; "
            "add images or remove those class folders")


def usable_counts(report: AuditReport) -> dict[str, int]:
    """Images per class that training can use (unreadable files and decompression bombs left out)."""
    bad = Counter(_class_of(item["path"], report) for item in [*report.unreadable, *report.decompression_bombs])
    return {cls: count - bad[cls] for cls, count in report.class_counts.items()}


def _class_of(relative: str, report: AuditReport) -> str:
    parts = Path(relative).parts
    index = 1 if report.split_counts is not None else 0  # train/<class>/file vs <class>/file
    return parts[index] if len(parts) > index + 1 else ""


def folder_notes(report: AuditReport) -> list[str]:
    """What the audit found that the comparison should know about, and what the recipe does about it."""
    usable = usable_counts(report)
    notes = [f"{report.files:,} images in {len(usable)} classes: "
             + ", ".join(f"{c} {n:,}" for c, n in usable.items())]
    largest, smallest = max(usable, key=usable.get), min(usable, key=usable.get)
    ratio = usable[largest] / usable[smallest]
    if ratio >= IMBALANCE_WARNING_RATIO:
        notes.append(
            f"warning: imbalanced classes ({largest} {usable[largest]:,} vs {smallest} {usable[smallest]:,}, "
            f"{ratio:.1f}x): splits stay stratified, train_per_class caps the larger classes, and judge the models "
            "by macro F1 and per-class recall, which weigh every class equally")
    bad = len(report.unreadable) + len(report.decompression_bombs)
    if bad:
        notes.append(f"warning: {bad} unusable image file(s) (e.g. {[*report.unreadable, *report.decompression_bombs][0]['path']}): "
                     "skip_bad: true leaves them out and lists them in each manifest.json")
    groups = len(report.exact_duplicates) + len(report.near_duplicates) + len(report.cross_split or [])
    if groups:
        notes.append(f"warning: {groups} group(s) of duplicate or near-duplicate images: duplicates: drop removes "
                     "those that land in val/test, so no test image is also a training image")
    if report.outside_class_folders:
        notes.append(f"warning: {len(report.outside_class_folders)} image(s) outside any class folder are not used")
    if report.tiny:
        notes.append(f"warning: {len(report.tiny)} tiny image(s) (under {report.settings.get('min_side')} px a side)")
    return notes


# --------------------------------------------------------------------------------------------
# The recipe


def recipe_for_folder(
    folder: str | Path,
    models: str | Sequence[str],
    *,
    budget: str | float | None = None,
    seed: int = 0,
    overrides: Sequence[str] = (),
    audit: AuditReport | None = None,
) -> Config:
    """The config ``compare_folder`` runs: one experiment per model on ``folder``.

    ``overrides`` are ``key=value`` strings as for ``load_config`` (e.g. ``training.epochs=1``);
    ``audit`` reuses a report of :func:`check_folder` instead of auditing again.
    """
    names = parse_models(models)
    plan = plan_for_budget(budget, len(names))
    report = audit if audit is not None else check_folder(folder)
    refuse_unfit(report)
    root = Path(folder).expanduser().resolve()
    raw: dict[str, Any] = {
        "seed": seed,
        "title": f"{' vs '.join(names)} on {root.name}",
        "experiments": [_experiment(name, root, plan, report) for name in names],
    }
    for override in overrides:
        raw = apply_override(raw, override)
    return parse_config(raw, source=f"recipe for {root}")


def _experiment(name: str, root: Path, plan: Plan, report: AuditReport) -> dict[str, Any]:
    spec = get_spec(name)
    blocks = FINE_TUNE_BLOCKS.get(spec.family)
    native = spec.default_input_shape[0]
    limit = plan.pretrained_size if blocks else plan.scratch_size
    size = min(native, limit) if limit else native
    duplicates = report.exact_duplicates or report.near_duplicates or report.cross_split
    data = {
        "dataset": "folder",
        "path": str(root),
        "image_size": size,
        "train_per_class": plan.train_per_class,
        "test_per_class": plan.test_per_class,
        "val_fraction": 0.15,
        "test_fraction": 0.2,
        "batch_size": 32,
        "augment": {"crop_padding": max(2, size // 16), "flip": True},
        "skip_bad": bool(report.unreadable or report.decompression_bombs),
        "duplicates": "drop" if duplicates else "refuse",
    }
    if blocks:
        return {"name": f"{name}_finetuned", "model": _pretrained_model(name), "data": data,
                "training": _fine_tune_training(plan, blocks)}
    return {"name": f"{name}_scratch", "data": data, "training": _scratch_training(plan),
            "model": {"name": name, "weights": None,
                      "options": {"stem": "imagenet" if size >= 64 else "cifar", "zero_init_residual": True,
                                  "dropout": 0.2}}}


def _pretrained_model(name: str) -> dict[str, Any]:
    # A local ImageNet file first (offline machines: $TRIPTYCH_WEIGHTS), then Keras's download,
    # then random weights; the manifest and the report say which one was used.
    weights = [f"$TRIPTYCH_WEIGHTS/{name}_imagenet_notop.weights.h5", "imagenet", "random"]
    return {"name": name, "weights": weights, "options": {"dropout": 0.3}}


def _fine_tune_training(plan: Plan, blocks: list[str]) -> dict[str, Any]:
    """Phase 1: the head on cached frozen features; phase 2: the last block(s) at a small learning rate."""
    return {"epochs": plan.head_epochs, "optimizer": "adam", "learning_rate": 1e-3, "weight_decay": 0.0,
            "schedule": "constant", "feature_cache": True, "time_budget": plan.seconds_per_model,
            "fine_tune": {"epochs": plan.fine_tune_epochs, "learning_rate": 1e-5, "unfreeze_blocks": blocks}}


def _scratch_training(plan: Plan) -> dict[str, Any]:
    return {"epochs": plan.scratch_epochs, "optimizer": "adamw", "learning_rate": 2e-3, "weight_decay": 0.05,
            "schedule": "cosine", "warmup_epochs": 1 if plan.scratch_epochs >= 4 else 0, "label_smoothing": 0.1,
            "time_budget": plan.seconds_per_model}


def recipe_yaml(config: Config, audit: AuditReport, budget: str | float | None = None) -> str:
    """``config`` as YAML, every key commented, with the audit's findings and the budget on top."""
    plan = plan_for_budget(budget, len(config.experiments))
    if plan.seconds_per_model is None:
        sizing = "no budget: native input sizes, every image, full epochs"
    else:
        sizing = (f"budget {budget}: about {plan.seconds_per_model:.0f} s per model on a small CPU machine, so smaller "
                  "inputs, train_per_class/test_per_class caps and time_budget (a measured warm-up chooses the "
                  "epochs that fit; the epochs below are upper limits)")
    header = "\n".join([
        f"triptych compare recipe for {audit.root}, written {dt.datetime.now().astimezone():%Y-%m-%d %H:%M}",
        *(f"audit: {note}" for note in folder_notes(audit)),
        sizing,
        "run it: triptych run THIS.yaml --out DIR (edit any key first; triptych config --schema lists them)",
        "",
    ])
    return commented_yaml(config, header)


# --------------------------------------------------------------------------------------------
# The run


def compare_folder(
    folder: str | Path,
    models: str | Sequence[str],
    out: str | Path,
    *,
    budget: str | float | None = None,
    track: str | None = None,
    seed: int = 0,
    overrides: Sequence[str] = (),
    resume: bool = False,
    overwrite: bool = False,
    log: Log = print,
) -> list:
    """Audit ``folder``, write ``out/config.yaml``, train and evaluate every model, write
    ``out/report.html``; returns the experiments' :class:`~triptych.rundir.RunDir`.

    ``track='mlflow'`` also logs each finished experiment to MLflow (as ``tracking: mlflow``).
    """
    from triptych.io import atomic_write_text
    from triptych.preflight import prepare_output_dir
    from triptych.runner import RunOptions, run_config  # loads TensorFlow

    names = parse_models(models)
    parse_budget(budget)  # a typo fails now, not after the audit
    report = check_folder(folder)
    for note in folder_notes(report):
        log(note)
    extra = [f"tracking={track}"] if track else []
    config = recipe_for_folder(folder, names, budget=budget, seed=seed, overrides=[*overrides, *extra], audit=report)
    out = Path(out)
    prepare_output_dir(out, resume=resume, overwrite=overwrite)
    atomic_write_text(out / "config.yaml", recipe_yaml(config, report, budget))
    log(f"config: {out / 'config.yaml'} (to repeat or edit: triptych run {out / 'config.yaml'} --out DIR)")
    # The output directory is checked and holds config.yaml: the runner continues in it (and tracks).
    runs = run_config(config, out, RunOptions(resume=True), log=log)
    log(f"per-epoch curves: tensorboard --logdir {out}")
    return runs
