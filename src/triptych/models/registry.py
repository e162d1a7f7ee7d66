"""The model registry (timm-style): look an architecture up by name and build it.

``build(name, num_classes, ...)`` is the one way the rest of the package makes a model. What
exists is data in :mod:`triptych.models.catalog`; the builders are
:func:`triptych.models.resnet.build_resnet` (our ResNets) and
:func:`triptych.models.pretrained.build_pretrained` (keras.applications backbones). Importing
this module imports no TensorFlow: the builders are imported when a model is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from triptych.errors import InvalidArgumentError, MissingFileError, TriptychError
from triptych.models.catalog import MODELS, ModelSpec

__all__ = ["MODELS", "ModelSpec", "build", "get_spec", "list_models"]


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise InvalidArgumentError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}") from None


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
        weights: ``None`` (random init), ``"imagenet"`` where the architecture has ImageNet
            weights (``$TRIPTYCH_WEIGHTS`` first, see :mod:`triptych.models.weights`), or a path
            to a Keras weights file.
        **options: architecture options (``stem``, ``dropout``, ... for ResNets; ``dropout``,
            ``l2`` for the head of a keras.applications backbone).
    """
    spec = get_spec(name)
    shape = _checked_input_shape(spec, input_shape)
    _check_arguments(spec, num_classes, weights, options)
    if spec.keras_backbone:
        from triptych.models.pretrained import build_pretrained as builder
    else:
        from triptych.models.resnet import build_resnet as builder
    try:
        return builder(spec, num_classes, shape, weights, **options)
    except ValueError as err:
        if isinstance(err, TriptychError):
            raise
        raise InvalidArgumentError(f"cannot build {name}: {err}") from err


def _checked_input_shape(spec: ModelSpec, input_shape) -> tuple[int, int, int]:
    shape = tuple(input_shape or spec.default_input_shape)
    smallest = spec.min_input_size
    if len(shape) != 3 or shape[2] != 3 or min(shape[:2]) < smallest:
        raise InvalidArgumentError(
            f"input_shape={shape}: {spec.name} takes (height, width, 3) with height and width at least {smallest}"
        )
    return shape


def _check_arguments(spec: ModelSpec, num_classes: int, weights: str | None, options: dict[str, Any]) -> None:
    if num_classes < 2:
        raise InvalidArgumentError(f"num_classes must be at least 2, got {num_classes}")
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise InvalidArgumentError(
            f"unknown option(s) {', '.join(unknown)} for {spec.name}; "
            f"valid options: {', '.join(spec.options) or 'none'}"
        )
    if weights == "imagenet" and not spec.pretrained:
        keras_own = f"keras_{spec.name}"
        hint = f"; {keras_own} is keras.applications' own, with ImageNet weights" if keras_own in MODELS else ""
        raise InvalidArgumentError(
            f"weights='imagenet': Keras has no ImageNet weights for {spec.name}; pass weights=None (random) "
            f"or a weights file path{hint}"
        )
    if weights and weights != "imagenet" and not Path(weights).expanduser().is_file():
        known = "'imagenet', " if spec.pretrained else ""
        raise MissingFileError(f"weights={weights!r} for {spec.name}: no such file; expected {known}a weights file "
                               "path, or None")
