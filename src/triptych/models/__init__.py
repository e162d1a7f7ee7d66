"""Model registry and architectures. ``build(name, num_classes, ...)`` makes any of them."""

from triptych.models.registry import MODELS, ModelSpec, build, get_spec, list_models, weights_origin

__all__ = ["MODELS", "ModelSpec", "build", "get_spec", "list_models", "weights_origin"]
