"""Model registry and architectures. ``build(name, num_classes, ...)`` makes any of them.

Importing this package imports no TensorFlow (listing models and reading cards stay light);
building a model does.
"""

from triptych.models.catalog import MODELS, ModelSpec
from triptych.models.registry import build, get_spec, list_models
from triptych.models.weights import weights_origin

__all__ = ["MODELS", "ModelSpec", "build", "get_spec", "list_models", "weights_origin"]
