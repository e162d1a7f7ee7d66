"""Model card numbers: parameters, multiply-adds per image, weights size, measured speed.

Multiply-adds (MACs) are counted from the built graph, layer by layer, from each layer's real
input and output shapes (so they follow the input size a user configures), recursing into
nested models such as the ``base`` backbone of Xception and DenseNet-121. Convolutions
(ordinary, depthwise, separable, transposed) and dense layers are counted; batch norm,
activations, pooling, additions and concatenations cost well under 1 % of the total and are
left out, as in the published figures (He et al.: ResNet-50 3.8-4.1 G "FLOPs", which are
multiply-adds). One MAC is two floating-point operations.

The qualitative side of a model card (key idea, pros, cons) is data, not code:
``cards.yaml`` beside this file, read by :func:`load_cards`.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from triptych.errors import TriptychError
from triptych.models.registry import build, get_spec, list_models

MIB = 2**20
CARD_FIELDS = ("architecture", "key_innovation", "pros", "cons", "best_use_case")


# --------------------------------------------------------------------------- graph walking


def model_nodes(model: Any) -> list[Any]:
    """The layer calls (keras ``Node``s) of a functional model, inputs first."""
    functional = getattr(model, "_functional", None) or model  # a Sequential wraps a functional model
    by_depth = getattr(functional, "_nodes_by_depth", None)
    if by_depth:
        return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]
    return [node for layer in functional.layers for node in layer._inbound_nodes[:1]]


def _is_nested_model(layer: Any) -> bool:
    return hasattr(layer, "layers") and (hasattr(layer, "_nodes_by_depth") or hasattr(layer, "_functional"))


@dataclass(frozen=True)
class LayerCost:
    name: str  # "base/block5_sepconv1" for a layer of a nested model
    class_name: str
    macs: int  # per image
    params: int


def layer_costs(model: Any, prefix: str = "") -> list[LayerCost]:
    """Multiply-adds and parameters of every layer call, nested models opened up."""
    costs: list[LayerCost] = []
    for node in model_nodes(model):
        layer = node.operation
        if _is_nested_model(layer):
            costs.extend(layer_costs(layer, f"{prefix}{layer.name}/"))
            continue
        input_shapes = [tuple(t.shape) for t in node.input_tensors]
        output_shape = tuple(node.output_tensors[0].shape)
        macs = layer_macs(layer, input_shapes[0] if input_shapes else (), output_shape)
        params = layer.count_params() if getattr(layer, "built", False) and layer.weights else 0
        costs.append(LayerCost(prefix + layer.name, layer.__class__.__name__, macs, params))
    return costs


def count_macs(model: Any) -> int:
    """Multiply-adds for one image through ``model``."""
    return sum(cost.macs for cost in layer_costs(model))


# --------------------------------------------------------------------------- per-layer formulas


def layer_macs(layer: Any, input_shape: tuple, output_shape: tuple) -> int:
    """Multiply-adds of one call of ``layer`` on one image (0 for layers we do not count)."""
    kind = layer.__class__.__name__
    if kind in ("Conv1D", "Conv2D", "Conv3D"):
        c_in = input_shape[-1]
        groups = getattr(layer, "groups", 1) or 1
        return _spatial(output_shape) * output_shape[-1] * math.prod(layer.kernel_size) * (c_in // groups)
    if kind in ("DepthwiseConv1D", "DepthwiseConv2D"):
        return _spatial(output_shape) * output_shape[-1] * math.prod(layer.kernel_size)
    if kind in ("SeparableConv1D", "SeparableConv2D"):
        return separable_costs(layer, input_shape, output_shape)["macs"]
    if kind in ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"):
        return _spatial(input_shape) * input_shape[-1] * math.prod(layer.kernel_size) * output_shape[-1]
    if kind == "Dense":
        return _spatial(input_shape) * input_shape[-1] * layer.units
    return 0


def _spatial(shape: tuple) -> int:
    """Positions per image: the product of the dimensions between batch and channels."""
    return math.prod(int(d) for d in shape[1:-1])


def separable_costs(layer: Any, input_shape: tuple, output_shape: tuple) -> dict[str, int]:
    """A separable convolution opened up -- depthwise k×k per input channel, then pointwise 1×1
    -- next to an ordinary k×k convolution with the same input and output shapes."""
    c_in, c_out = int(input_shape[-1]), int(output_shape[-1])
    multiplier = getattr(layer, "depth_multiplier", 1)
    kernel = math.prod(layer.kernel_size)
    positions = _spatial(output_shape)  # the stride is applied by the depthwise step
    bias = c_out if layer.use_bias else 0
    costs = {
        "depthwise_params": kernel * c_in * multiplier,
        "pointwise_params": c_in * multiplier * c_out,
        "bias_params": bias,
        "depthwise_macs": positions * kernel * c_in * multiplier,
        "pointwise_macs": positions * c_in * multiplier * c_out,
        "conv_params": kernel * c_in * c_out + bias,
        "conv_macs": positions * kernel * c_in * c_out,
    }
    costs["params"] = costs["depthwise_params"] + costs["pointwise_params"] + bias
    costs["macs"] = costs["depthwise_macs"] + costs["pointwise_macs"]
    return costs


# --------------------------------------------------------------------------- model profile


def profile_keras_model(model: Any, measure: bool = False, **measure_options: Any) -> dict[str, Any]:
    """The numbers of a model card for a built model."""
    costs = layer_costs(model)
    macs = sum(c.macs for c in costs)
    by_type: dict[str, int] = defaultdict(int)
    for cost in costs:
        if cost.macs:
            by_type[cost.class_name] += cost.macs
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    total = model.count_params()
    weight_bytes = sum(math.prod(w.shape) * _itemsize(w.dtype) for w in model.weights)
    input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    profile: dict[str, Any] = {
        "input_shape": list(input_shape),
        "params": int(total),
        "trainable_params": int(trainable),
        "non_trainable_params": int(total - trainable),
        "macs": int(macs),
        "gmacs": round(macs / 1e9, 3),
        "gflops": round(2 * macs / 1e9, 3),
        "weights_mb": round(weight_bytes / MIB, 1),
        "macs_by_layer_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1])),
    }
    if measure:
        profile.update(measure_speed(model, input_shape, **measure_options))
    return profile


def profile_model(
    name: str,
    input_shape: tuple[int, int, int] | None = None,
    measure: bool = False,
    *,
    num_classes: int = 1000,
    **measure_options: Any,
) -> dict[str, Any]:
    """Build the registry model ``name`` (random weights: nothing is downloaded) and profile it.

    ``num_classes`` defaults to 1000, the ImageNet head, so that the parameter counts compare
    with published ones; pass your data set's class count for the model you will train.
    ``measure=True`` adds latency (batch 1) and throughput (batch 32) on this machine: slow
    on a CPU at native input sizes.
    """
    spec = get_spec(name)
    shape = tuple(input_shape or spec.default_input_shape)
    model = build(name, num_classes, shape)
    try:
        profile = profile_keras_model(model, measure=measure, **measure_options)
    finally:
        del model
    return {
        "model": name,
        "family": spec.family,
        "description": spec.description,
        "num_classes": num_classes,
        **profile,
    }


def measure_speed(
    model: Any,
    input_shape: tuple[int, ...],
    *,
    runs: int = 5,
    warmup: int = 2,
    batch_size: int = 32,
    batch_runs: int = 3,
) -> dict[str, Any]:
    """Latency at batch 1 (median ms over ``runs`` after ``warmup``) and throughput at
    ``batch_size`` (images/s from the median batch time), with one traced forward pass for both
    batch sizes (no retrace between them)."""
    import numpy as np

    from triptych.models.forward import forward_function

    rng = np.random.default_rng(0)
    forward = forward_function(model, input_shape)

    def median_seconds(batch: int, repeats: int) -> float:
        x = rng.random((batch, *input_shape), dtype=np.float32)
        for _ in range(warmup):  # the first call traces the forward pass
            forward(x).numpy()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            forward(x).numpy()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    latency = median_seconds(1, runs)
    batch_time = median_seconds(batch_size, batch_runs)
    return {
        "latency_ms": round(latency * 1000, 1),
        "throughput_img_s": round(batch_size / batch_time, 1),
        "batch_size": batch_size,
        "device": _device(),
    }


def _device() -> str:
    try:
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return f"GPU ({len(gpus)})"
    except Exception:  # another backend, or TensorFlow without GPU support
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU ({cores} cores)"


def _itemsize(dtype: Any) -> int:
    import numpy as np

    return np.dtype(getattr(dtype, "name", dtype)).itemsize


# --------------------------------------------------------------------------- cards


@lru_cache(maxsize=1)
def _cards_text() -> str:
    return resources.files("triptych.models").joinpath("cards.yaml").read_text(encoding="utf-8")


def load_cards() -> dict[str, Any]:
    """The qualitative model cards (``cards.yaml``): ``{"label": ..., "families": {family: card},
    "published": {...}}``. Every registry family has a card with the fields of :data:`CARD_FIELDS`."""
    import yaml

    try:
        cards = yaml.safe_load(_cards_text())
    except yaml.YAMLError as err:
        raise TriptychError(f"triptych/models/cards.yaml is not valid YAML: {err}") from err
    families = cards.get("families") or {}
    for family in sorted({spec.family for spec in list_models()}):
        _check_card(family, families.get(family))
    return cards


def _check_card(family: str, card: dict[str, Any] | None) -> None:
    if card is None:
        raise TriptychError(f"cards.yaml has no card for model family {family!r}")
    missing = [f for f in CARD_FIELDS if not card.get(f)]
    if missing:
        raise TriptychError(f"cards.yaml: family {family!r} lacks {', '.join(missing)}")
    for key in CARD_FIELDS:
        expected_list = key in ("pros", "cons")
        value = card[key]
        if expected_list:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            ok = isinstance(value, str)
        if not ok:
            what = "a list of strings (quote items that contain ': ')" if expected_list else "a string"
            raise TriptychError(f"cards.yaml: {family}.{key} must be {what}")
