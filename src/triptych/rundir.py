"""The run directory contract that training writes and evaluation / reporting read.

``OUT/<experiment>/`` holds:

- ``config.yaml``      the resolved experiment config
- ``manifest.json``    the run record (:class:`RunRecord`): model, weights origin, seed, versions,
                       git sha, data fingerprints, times, phases done, ``status`` (``running`` |
                       ``done`` | ``failed``) and ``reason``, peak memory
- ``history.csv``      one row per epoch: ``epoch``, ``accuracy``, ``loss``, ``val_accuracy``,
                       ``val_loss``, ``learning_rate``, ``epoch_seconds`` (and ``phase``)
- ``model.keras``      the selected (best on validation) model
- ``predictions.csv``  one row per test image: ``path``, ``y_true``, ``y_pred`` (class names),
                       ``prob_<class>`` per class
- ``metrics.json``     computed from ``predictions.csv`` by :mod:`triptych.evaluation`
- ``split.csv``        which file (or array index) went to train / val / test

The runner (:mod:`triptych.runner`) is the one writer of the run record; everything else reads
it through :meth:`RunDir.read_record`. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from triptych.errors import TriptychError
from triptych.io import atomic_write_text

STATUS_RUNNING = "running"
STATUS_DONE = "done"
STATUS_FAILED = "failed"
Status = Literal["running", "done", "failed"]


class _Record(BaseModel):
    # A key nobody declared is a drift between writer and reader: refuse it rather than guess.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitFingerprints(_Record):
    """sha256 of each split's file list (paths and labels), see ``triptych.data.sources.fingerprint``."""

    train: str
    val: str
    test: str


class DataInfo(_Record):
    """What the model was trained and tested on."""

    origin: str  # where the images came from (dataset and folder)
    note: str | None = None  # e.g. the folder was missing and the declared fallback was used
    train: int
    val: int
    test: int
    fingerprint: SplitFingerprints


class BadImageInfo(_Record):
    """An image file left out of the run (or that stopped it), and why."""

    path: str
    reason: str


class FeatureCacheInfo(_Record):
    """Phase 1 of fine-tuning on cached frozen-backbone features."""

    train_features: list[int]  # shape of the training feature array (images x views, features)
    views: int
    dtype: str
    hit: bool  # reused from the cache rather than computed
    seconds: float


class PrecisionInfo(_Record):
    """The precision the experiment ran in (``training.precision: auto`` resolved) and why."""

    precision: str  # fp32 | bf16 | fp16
    requested: str  # as configured: auto | fp32 | bf16 | fp16
    reason: str
    measured: dict = {}  # auto on a CPU: the side-by-side bf16/fp32 measurement it chose by


class BudgetInfo(_Record):
    """A time budget turned into epochs (``training.time_budget``), decided once before training
    from a measured warm-up on this machine; a resumed run reuses it and never measures again."""

    seconds: float  # the experiment's budget (its share, for a whole config's budget)
    chosen_epochs: dict[str, int]  # per phase, in order ("train", or "head" then "fine-tune")
    configured_epochs: dict[str, int]  # the upper limits from the config
    seconds_per_epoch: dict[str, float]  # measured: training steps, validation, checkpoints
    train_img_s: dict[str, float]  # measured training speed per phase (head on a cache: features/s)
    predict_img_s: float  # measured inference speed (validation, cache build, test predictions)
    fixed_seconds: float  # outside the epochs: spent before the decision, traces, cache build, evaluation
    planned_seconds: float  # the plan's total


class RecipeInfo(_Record):
    """The optional parts of the training recipe, as the run applied them."""

    augment: str  # every training augmentation that is on (str of triptych.data.augmentation.Augment)
    ema_momentum: float | None = None  # the weights' moving average; None: not averaged
    class_weights: dict[str, float] | None = None  # loss weight per class name; None: equal weights
    tta: str = "none"  # test-time augmentation: none | flip


class TrunkCacheInfo(_Record):
    """Phase 2 of fine-tuning on cached activations of the frozen trunk."""

    tensors: list[str]  # the trunk tensors the unfrozen top reads, named by their layers
    train_shapes: list[list[int]]  # each cached training array (views x images, ...)
    views: int  # training views per image (1: clean; K >= 2: augmented)
    dtype: str  # storage dtype (float16)
    hit: bool  # reused from the cache rather than computed
    seconds: float


# RunRecord.predicted_from: how the test predictions were computed.
PREDICTED_FROM_IMAGES = "images"  # the test images through the whole model
# The fine-tuned top on the frozen trunk's float16 activations of the test images (training.trunk_cache).
PREDICTED_FROM_TRUNK_CACHE = "trunk cache"


class RunRecord(_Record):
    """``manifest.json``: everything a run records about itself, written by the runner alone.

    Fields are filled in as the run gets to them (``None`` / empty until then); the JSON keys
    are the field names.
    """

    status: Status
    reason: str | None = None  # why it failed (one line)
    started: str | None = None  # ISO 8601 UTC, of the latest session (a resumed run restarts it)
    finished: str | None = None
    experiment: str
    model: str
    family: str | None = None  # registry family (resnet, xception, densenet)
    seed: int
    versions: dict[str, str] = {}
    git_sha: str | None = None  # with "-dirty" when the checkout had uncommitted changes
    bad_images: list[BadImageInfo] = []
    data: DataInfo | None = None
    class_names: list[str] = []
    image_size: int | None = None
    precision: PrecisionInfo | None = None
    preprocessing: str | None = None  # the input scaling the model was trained with (data.preprocessing key)
    weights: str | None = None  # where the weights came from (weights_origin), "random" for none
    weights_note: str | None = None  # why earlier weights candidates were not used
    expected_pretrained: bool | None = None  # the architecture is meant to start from pretrained weights
    frozen_base_phase: bool | None = None  # phase 1 trains the head on a frozen backbone
    phases_done: list[str] = []  # "train", or "head" then "fine-tune"
    feature_cache: FeatureCacheInfo | None = None
    budget: BudgetInfo | None = None  # training.time_budget: the epochs chosen for it and why
    recipe: RecipeInfo | None = None  # augmentation, weight average, class weights, test-time augmentation
    trunk_cache: TrunkCacheInfo | None = None  # the fine-tune phase on cached trunk activations
    best_epoch: int | None = None
    train_seconds: float | None = None  # the epochs in history.csv (every session) plus feature and trunk extraction
    predict_seconds: float | None = None
    predicted_from: str | None = None  # PREDICTED_FROM_IMAGES or PREDICTED_FROM_TRUNK_CACHE
    peak_rss_mb: float | None = None


class RunRecordError(TriptychError):
    """``manifest.json`` exists but is not a run record."""


@dataclass(frozen=True)
class RunDir:
    """Paths inside one experiment's run directory."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def model(self) -> Path:
        return self.root / "model.keras"

    @property
    def best_weights(self) -> Path:
        return self.root / "checkpoints" / "best.weights.h5"

    @property
    def backup_dir(self) -> Path:
        return self.root / "checkpoints" / "backup"

    @property
    def tensorboard_dir(self) -> Path:
        return self.root / "tensorboard"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def split(self) -> Path:
        return self.root / "split.csv"

    def read_record(self) -> RunRecord | None:
        """The run record, or None when there is no ``manifest.json`` (yet)."""
        if not self.manifest.exists():
            return None
        try:
            return RunRecord.model_validate_json(self.manifest.read_bytes())
        except (ValidationError, OSError) as err:
            first = err.errors()[0] if isinstance(err, ValidationError) else None
            what = f"{'.'.join(map(str, first['loc'])) or 'record'}: {first['msg']}" if first else str(err)
            raise RunRecordError(f"{self.manifest} is not a triptych run record ({what})") from None

    def write_record(self, record: RunRecord) -> None:
        """Only the runner calls this (and test fixtures that stand in for it)."""
        atomic_write_text(self.manifest, json.dumps(record.model_dump(mode="json"), indent=2) + "\n")

    @property
    def status(self) -> str | None:
        record = self.read_record()
        return None if record is None else record.status

    def is_done(self) -> bool:
        return self.status == STATUS_DONE


def experiment_dirs(out: Path) -> list[RunDir]:
    """Experiment directories directly under ``out`` (those with a manifest), sorted by name."""
    return sorted(
        (RunDir(p) for p in Path(out).iterdir() if (p / "manifest.json").exists()),
        key=lambda r: r.name,
    )
