"""The model registry: every architecture triptych can build, by name (timm-style).

``build(name, num_classes, ...)`` is the one way the rest of the package makes a model,
so a new architecture only has to be registered here.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from triptych.errors import TriptychError


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of triptych needs to know about an architecture."""

    name: str
    builder: Callable[..., Any]
    default_input_shape: tuple[int, int, int]
    preprocessing: str  # a key of triptych.data.preprocessing.PREPROCESSORS
    family: str
    description: str
    pretrained: tuple[str, ...] = ()  # weight names the builder understands, e.g. ("imagenet",)
    options: tuple[str, ...] = field(default=())


def _resnet_builder(depth: str) -> Callable[..., Any]:
    def build_resnet(num_classes: int, input_shape: tuple[int, int, int], weights: str | None, **options: Any):
        from triptych.models.resnet import ResNet

        if weights == "imagenet":
            return _resnet50_imagenet(depth, num_classes, input_shape, **options)
        model = ResNet(depth, num_classes, input_shape, **options)
        if weights:
            load_weights_file(model, weights)
        return model

    return build_resnet


def _resnet50_imagenet(depth: str, num_classes: int, input_shape, **options: Any):
    """ImageNet weights for the from-scratch ResNet-50, copied from keras.applications."""
    if depth != "resnet50":
        raise TriptychError(f"ImageNet weights are available for resnet50 only, not {depth}; use weights: null")
    import keras

    from triptych.models.resnet import ResNet

    options = {**options, "keras_compat": True}
    try:
        reference = keras.applications.ResNet50(include_top=False, weights="imagenet", input_shape=input_shape)
    except Exception as err:  # network failure surfaces as many exception types
        raise TriptychError(
            f"could not download ImageNet weights for resnet50 ({err.__class__.__name__}: {err}); "
            "use weights: null, or a local weights file path"
        ) from err
    model = ResNet(depth, num_classes, input_shape, **options)
    backbone = ResNet(depth, num_classes, input_shape, include_top=False, **options)
    backbone.set_weights(reference.get_weights())
    for layer in backbone.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    return model


RESNET_OPTIONS = ("stem", "dropout", "zero_init_residual", "keras_compat")
HEAD_OPTIONS = ("dropout", "l2")


def _pretrained_builder(arch: str) -> Callable[..., Any]:
    def build_backbone_with_head(num_classes: int, input_shape, weights: str | None, **options: Any):
        from triptych.models.pretrained import build_pretrained

        return build_pretrained(arch, num_classes, input_shape, weights, **options)

    return build_backbone_with_head


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name=depth,
            builder=_resnet_builder(depth),
            default_input_shape=(224, 224, 3),
            preprocessing="torch",
            family="resnet",
            description=description,
            pretrained=("imagenet",) if depth == "resnet50" else (),
            options=RESNET_OPTIONS,
        )
        for depth, description in (
            ("resnet18", "ResNet-18 from scratch (basic blocks, v1.5)"),
            ("resnet34", "ResNet-34 from scratch (basic blocks, v1.5)"),
            ("resnet50", "ResNet-50 from scratch (bottleneck blocks, v1.5)"),
            ("resnet101", "ResNet-101 from scratch (bottleneck blocks, v1.5)"),
            ("resnet152", "ResNet-152 from scratch (bottleneck blocks, v1.5)"),
        )
    )
}
MODELS.update(
    {
        "xception": ModelSpec(
            name="xception",
            builder=_pretrained_builder("xception"),
            default_input_shape=(299, 299, 3),
            preprocessing="tf",
            family="xception",
            description="Xception (keras.applications) + GAP/Dropout/Dense head, for fine-tuning",
            pretrained=("imagenet",),
            options=HEAD_OPTIONS,
        ),
        "densenet121": ModelSpec(
            name="densenet121",
            builder=_pretrained_builder("densenet121"),
            default_input_shape=(224, 224, 3),
            preprocessing="torch",
            family="densenet",
            description="DenseNet-121 (keras.applications) + regularised GAP/Dropout/Dense head, for fine-tuning",
            pretrained=("imagenet",),
            options=HEAD_OPTIONS,
        ),
    }
)


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise TriptychError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}") from None


def list_models() -> list[ModelSpec]:
    return [MODELS[name] for name in sorted(MODELS)]


def build(
    name: str,
    num_classes: int,
    input_shape: tuple[int, int, int] | None = None,
    weights: str | None = None,
    **options: Any,
):
    """Build a registered model.

    Args:
        name: a registry name (see :func:`list_models`).
        num_classes: number of output classes (softmax).
        input_shape: ``(height, width, 3)``; defaults to the architecture's native size.
        weights: ``None`` (random init), ``"imagenet"`` where the architecture supports it,
            or a path to a Keras weights file.
        **options: architecture options (e.g. ``stem``, ``dropout`` for ResNets).
    """
    spec = get_spec(name)
    if num_classes < 2:
        raise TriptychError(f"num_classes must be at least 2, got {num_classes}")
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise TriptychError(
            f"unknown option(s) {', '.join(unknown)} for {name}; valid options: {', '.join(spec.options) or 'none'}"
        )
    if weights and weights not in spec.pretrained and not Path(weights).exists():
        known = f"{', '.join(spec.pretrained)}, " if spec.pretrained else ""
        raise TriptychError(f"weights {weights!r} for {name}: not a file; expected {known}a weights file path, or null")
    try:
        return spec.builder(num_classes, tuple(input_shape or spec.default_input_shape), weights, **options)
    except ValueError as err:
        raise TriptychError(f"cannot build {name}: {err}") from err


def load_weights_file(model, path: str | Path) -> None:
    """Load a Keras weights file, turning a shape or architecture mismatch into one clear line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(str(path))
        except Exception as err:  # keras raises ValueError / KeyError / OSError depending on the mismatch
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
            raise TriptychError(f"weights file {path} does not fit {model.name}: {first_line[:300]}") from err
    # Keras only *warns* when parts of the file match nothing: that is a half-loaded model, refuse it.
    skipped = [w for w in caught if "Skipping" in str(w.message) or "mismatch" in str(w.message).lower()]
    if skipped:
        raise TriptychError(
            f"weights file {path} does not fit {model.name}: {len(skipped)} part(s) of the file match no layer "
            f"(first: {str(skipped[0].message).splitlines()[0][:200]})"
        )


def weights_origin(weights: str | None) -> str:
    """How the manifest and the report describe where a model's weights came from."""
    if not weights:
        return "random"
    if weights == "imagenet":
        return "imagenet"
    return f"local file {Path(weights).name} (sha256 {file_sha256(weights)[:16]})"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
