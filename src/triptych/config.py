"""Experiment configs: YAML in, typed and validated objects out.

Every mistake (unknown key, wrong type, bad value) becomes one line naming the key and
what is allowed, raised as :class:`TriptychError`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from triptych.budget import parse_budget
from triptych.errors import TriptychError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RandAugmentConfig(_Strict):
    num_ops: int = Field(2, ge=1, description="operations applied to each image, drawn from keras.layers.RandAugment's 11")
    magnitude: float = Field(0.5, gt=0, le=1, description="strength of the operations, 0-1 (RandAugment's factor)")


# Off by default: none has been measured on this project's datasets yet (each is a key to turn on).
class AugmentConfig(_Strict):
    crop_padding: int = Field(0, ge=0, description="zero-pad by this many pixels, then random-crop back")
    flip: bool = Field(False, description="random horizontal flip")
    rand_augment: RandAugmentConfig | None = Field(
        None, description="keras.layers.RandAugment on each training image, e.g. {num_ops: 2, magnitude: 0.5}; null: off"
    )
    zoom: float = Field(0.0, ge=0, lt=1, description="random zoom in or out by up to this fraction (keras.layers.RandomZoom); 0: off")
    erasing: float = Field(
        0.0, ge=0, le=1, description="probability of erasing a random rectangle of an image (keras.layers.RandomErasing); 0: off"
    )
    mixup: float | None = Field(
        None, gt=0, description="MixUp of training batches with this Beta alpha, e.g. 0.2 (keras.layers.MixUp); null: off"
    )
    cutmix: float | None = Field(
        None,
        gt=0,
        le=1,
        description="CutMix of training batches, factor 0-1, e.g. 1.0 (keras.layers.CutMix); null: off. "
        "With mixup too, each batch gets one of the two, at random",
    )

    @property
    def varies_images(self) -> bool:
        """Whether two passes over the training images differ (so augmented cache views differ)."""
        return bool(self.crop_padding or self.flip or self.rand_augment or self.zoom or self.erasing
                    or self.mixup or self.cutmix)


class DataConfig(_Strict):
    dataset: Literal["cifar10", "folder"] = Field(
        "cifar10", description="cifar10 (from $TRIPTYCH_MIRROR or Keras) or folder (data.path)"
    )
    path: str | None = Field(
        None, description="image folder (one subfolder per class) when dataset is 'folder'; $VARS are expanded"
    )
    fallback: Literal["cifar10"] | None = Field(
        None, description="dataset to use (and say so) when the folder does not exist, e.g. on a fresh machine"
    )
    image_size: int | None = Field(None, ge=8, le=1024, description="square input size; default: the model's native size")
    train_per_class: int | None = Field(None, ge=1, description="stratified subset of the training data")
    test_per_class: int | None = Field(None, ge=1, description="stratified subset of the test data")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="validation share carved from the training data, stratified, seeded")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="for folders without a test/ split")
    batch_size: int = Field(64, ge=1, description="global batch (split over the replicas of a distribution strategy)")
    augment: AugmentConfig = Field(AugmentConfig(), description="training-time augmentation")
    tta: Literal["none", "flip"] = Field(
        "none", description="test-time augmentation: flip averages the probabilities of each test image and its mirror image"
    )
    cache: bool | None = Field(None, description="keep decoded images in RAM; default: when they fit 1 GiB")
    split_seed: int | None = Field(
        None, description="seed of the train/val/test split (and subsets); null: the run's seed. Repeats set it"
    )
    skip_bad: bool = Field(
        False,
        description="image files that cannot be used (unreadable, truncated, not an image, decompression bomb) are "
        "left out and listed in manifest.json; false: the run stops before training, naming the first one",
    )
    duplicates: Literal["refuse", "drop", "allow"] = Field(
        "refuse",
        description="folder datasets: near-duplicate images across train/val/test splits are refused, dropped "
        "from val/test, or allowed",
    )

    @model_validator(mode="after")
    def _folder_needs_path(self) -> DataConfig:
        if self.dataset == "folder" and not self.path:
            raise ValueError("data.path is required when data.dataset is 'folder'")
        return self


class ModelConfig(_Strict):
    name: str = Field("resnet50", description="a registered model: resnet18/34/50/101/152, xception, densenet121 (triptych models)")
    weights: str | list[str | None] | None = Field(
        None,
        description="null (random), 'imagenet', a weights file path ($VARS expanded), or a list of these "
        "tried in order (e.g. [local file, imagenet, random])",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="architecture options, e.g. stem, dropout")


class EarlyStoppingConfig(_Strict):
    patience: int = Field(5, ge=1, description="epochs without improvement before training stops")
    monitor: Literal["val_loss", "val_accuracy"] = Field("val_loss", description="the validation metric watched")


class FineTuneConfig(_Strict):
    """Phase 2 of transfer learning: unfreeze the last blocks and train at a small learning rate."""

    epochs: int = Field(3, ge=1, description="phase-2 epochs, after the head phase")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="phase-2 optimizer")
    learning_rate: float = Field(1e-5, gt=0, description="phase-2 learning rate (small, so the pretrained features survive)")
    unfreeze_blocks: list[str] = Field(default_factory=list, description="e.g. [block14, block13] or [conv5_block16]")
    unfreeze_layers: int | None = Field(None, ge=1, description="or: the last N layers of the backbone")
    early_stopping_patience: int | None = Field(
        2, ge=1, description="stop phase 2 after this many epochs without a better val_loss; null: never"
    )
    trunk_cache: bool | None = Field(
        None,
        description="run the frozen layers below the unfrozen ones once per image view, keep their activations "
        "($TRIPTYCH_CACHE, float16) and train the unfrozen blocks and the head on them; null: whenever the "
        "unfrozen layers leave a frozen trunk below them; false: every epoch runs the whole backbone",
    )
    cache_views: int | None = Field(
        None,
        ge=1,
        description="trunk cache: views per training image; 1: one clean (unaugmented) view; K >= 2: K augmented "
        "views (needs data.augment), epoch e trains on view e mod K; null: 2 when data.augment is on, else 1",
    )

    @model_validator(mode="after")
    def _something_to_unfreeze(self) -> FineTuneConfig:
        if not self.unfreeze_blocks and not self.unfreeze_layers:
            raise ValueError("fine_tune needs unfreeze_blocks (e.g. [block14]) or unfreeze_layers (e.g. 20)")
        return self


class TrainingConfig(_Strict):
    epochs: int = Field(10, ge=1, description="epochs (pretrained backbones: of the head phase)")
    optimizer: Literal["sgd", "adamw", "adam"] = Field("sgd", description="sgd (with momentum), adamw or adam")
    learning_rate: float = Field(0.1, gt=0, description="peak learning rate (after warm-up)")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd momentum")
    nesterov: bool = Field(True, description="sgd: Nesterov momentum")
    weight_decay: float = Field(5e-4, ge=0, description="decoupled weight decay; not applied to BatchNorm and biases")
    schedule: Literal["cosine", "step", "constant"] = Field(
        "cosine", description="learning-rate schedule: cosine decay, step (divide by 10 at step_epochs), constant"
    )
    step_epochs: list[int] = Field(default_factory=list, description="epochs where the 'step' schedule divides the LR by 10")
    warmup_epochs: float = Field(0, ge=0, description="linear learning-rate warm-up, in epochs (fractions allowed)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the cross-entropy loss")
    ema: bool = Field(
        False, description="validate, checkpoint and keep an exponential moving average of the weights (optimizer use_ema)"
    )
    ema_momentum: float = Field(0.99, gt=0, lt=1, description="ema: the average's momentum per training step")
    class_weight: Literal["balanced"] | None = Field(
        None, description="balanced: weight the loss of each class by n_train / (n_classes * its count), as sklearn; null: equal"
    )
    early_stopping: EarlyStoppingConfig | None = Field(
        None, description="null: train every epoch; or {patience: 5, monitor: val_loss}"
    )
    # On by default: scalars once per epoch cost next to nothing and answer "what happened in epoch 7?".
    tensorboard: bool = Field(True, description="TensorBoard scalars per epoch in <run>/tensorboard/ (tensorboard --logdir DIR)")
    freeze_base: Literal["auto"] | bool = Field(
        "auto", description="train only the head in this phase; auto: when the backbone starts pretrained"
    )
    feature_cache: bool = Field(True, description="frozen base: compute its features once, train the head on them")
    cache_views: int = Field(
        1, ge=1, description="feature cache: views per training image; 1: one clean (unaugmented) view; "
        "K >= 2: K augmented views (data.augment), all K x N rows in every head epoch"
    )
    cache_dtype: Literal["float32", "bfloat16"] = Field("float32", description="compute cached features in this precision")
    fine_tune: FineTuneConfig | None = Field(
        None,
        description="pretrained backbones: phase 2, e.g. {epochs: 3, learning_rate: 1.0e-5, unfreeze_blocks: [block14]}; "
        "null: head phase only",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="mixed precision: bf16 (mixed_bfloat16), fp16 (mixed_float16, loss scaling) or fp32; auto: bf16 "
        "where measured faster on this machine (once, remembered in $TRIPTYCH_CACHE), else fp32; softmax and loss stay float32",
    )
    strategy: Literal["default", "mirrored", "multiworker"] = Field(
        "default", description="tf.distribute: mirrored (GPUs of one machine), multiworker (TF_CONFIG or Slurm)"
    )
    time_budget: str | float | None = Field(
        None,
        description="wall time for the whole experiment, e.g. '90s', '10m', '1h30m' or seconds: a measured warm-up "
        "on this machine chooses the epochs (and the schedule's length) that fit; epochs and fine_tune.epochs "
        "become upper limits. null: train the configured epochs",
    )

    @field_validator("time_budget")
    @classmethod
    def _duration(cls, budget: str | float | None) -> str | float | None:
        parse_budget(budget)  # a typo is refused with the config, not after the data is loaded
        return budget


class ExperimentConfig(_Strict):
    # "@s<seed>" ends the name of one repeat's run directory (triptych.repeats); a config's own names may not use "@".
    name: str = Field(
        ..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*(@s[0-9]+)?$", description="also the run subdirectory name"
    )
    model: ModelConfig = Field(ModelConfig(), description="the architecture and its starting weights")
    data: DataConfig = Field(DataConfig(), description="dataset, split, input size, batches")
    training: TrainingConfig = Field(TrainingConfig(), description="optimisation, phases, precision, distribution")
    repeats: int = Field(
        1,
        ge=1,
        description="train this many times with seeds seed, seed+1, ..., each into its own run directory "
        "<name>@s<seed>; the report shows mean ± sd per model and a test between models over the repeats",
    )
    resplit: bool = Field(
        False,
        description="repeats: each seed also draws its own stratified train/val/test split; false: every repeat "
        "trains and tests on the split of the config's seed (data.split_seed if set)",
    )


class Config(_Strict):
    seed: int = Field(0, description="one seed for splits, initialisation, shuffling and augmentation")
    title: str = Field("triptych comparison", description="the report's title")
    # Top-level, not per experiment: one MLflow parent run holds every experiment of a config,
    # so the whole comparison lands in one place (and --set tracking=mlflow sets it once).
    tracking: Literal["none", "mlflow"] = Field(
        "none",
        description="mlflow: log each experiment as an MLflow run nested under one run for the config "
        "(pip install triptych[mlflow]; MLFLOW_TRACKING_URI, else a local store under the output directory)",
    )
    # The same as RunOptions(budget=...) / `triptych run --budget` (which override it), kept in the config so a
    # recipe sized for a wall time (configs/demo.yaml) says so itself.
    time_budget: str | float | None = Field(
        None,
        description="wall time for the whole config, e.g. '10m' or seconds: shared out over the experiments as they "
        "run (an experiment's own training.time_budget is kept as its share; the others share what is left "
        "equally); each share is that experiment's time_budget. null: each experiment's own time_budget only",
    )
    experiments: list[ExperimentConfig] = Field(..., min_length=1, description="the models to train and compare")

    @field_validator("time_budget")
    @classmethod
    def _whole_duration(cls, budget: str | float | None) -> str | float | None:
        parse_budget(budget)  # a typo is refused with the config, before anything runs
        return budget

    @field_validator("experiments")
    @classmethod
    def _unique_names(cls, experiments: list[ExperimentConfig]) -> list[ExperimentConfig]:
        names = [e.name for e in experiments]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"experiment names must be unique; repeated: {', '.join(duplicates)}")
        marked = [n for n in names if "@" in n]
        if marked:
            raise ValueError(f"experiment names may not contain '@' (it marks a repeat's run directory): {marked[0]}")
        return experiments


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply ``key=value`` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise TriptychError(f"config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise TriptychError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from err
    if not isinstance(raw, dict):
        raise TriptychError(f"{path}: expected a mapping with 'experiments', got {type(raw).__name__}")
    for override in overrides or []:
        raw = apply_override(raw, override)
    return parse_config(raw, source=str(path))


def parse_config(raw: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise TriptychError(f"{source}: {_describe(err)}") from None


def apply_override(raw: dict[str, Any], override: str) -> dict[str, Any]:
    """``training.epochs=1`` sets the key in every experiment; ``seed=3`` sets a top-level key;
    ``experiments.0.training.epochs=1`` one experiment. Values are parsed as YAML."""
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise TriptychError(f"--set {override!r}: expected key=value, e.g. training.epochs=2")
    parsed = yaml.safe_load(value) if value else None
    parts = key.split(".")
    raw = copy.deepcopy(raw)
    if parts[0] in Config.model_fields:
        _set_path(raw, parts, parsed, override)
    else:
        for experiment in raw.get("experiments") or []:
            _set_path(experiment, parts, parsed, override)
    return raw


def _set_path(target: Any, parts: list[str], value: Any, override: str) -> None:
    for part in parts[:-1]:
        if isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        elif isinstance(target, dict):
            target = target.setdefault(part, {})
        else:
            raise TriptychError(f"--set {override!r}: {part!r} does not name a section")
        if target is None:
            raise TriptychError(f"--set {override!r}: {part!r} is empty")
    if not isinstance(target, dict):
        raise TriptychError(f"--set {override!r}: cannot set {parts[-1]!r} there")
    target[parts[-1]] = value


def _describe(err: ValidationError) -> str:
    """The first validation problem as one line: where, what, what is allowed."""
    # An unknown key usually explains the other errors (e.g. a misspelt required key).
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    where = _location(first["loc"])
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(first["loc"])
        return f"unknown key {where!r}" + (f"; allowed keys here: {', '.join(allowed)}" if allowed else "")
    message = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    got_text = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    more = f" [and {len(errors) - 1} more problem(s)]" if len(errors) > 1 else ""
    return f"{where or 'config'}: {message}{got_text}{more}"


def _location(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation
        inner = getattr(annotation, "__args__", (annotation,))
        model = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def to_yaml(obj: BaseModel) -> str:
    return yaml.safe_dump(obj.model_dump(mode="json"), sort_keys=False)
