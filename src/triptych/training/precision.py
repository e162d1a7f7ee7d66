"""Mixed precision as a config switch: ``training.precision: auto | fp32 | bf16 | fp16``.

- ``auto`` (the default): bf16 where it is measured faster on this machine, else fp32 (GPUs:
  by compute capability); :func:`triptych.training.precision_auto.resolve_precision` turns it
  into one of the three below, with the reason, before any model is built. Everything here
  takes a resolved value and refuses ``auto``, so that what ran is always what was recorded.

- ``fp32``: everything in float32 (Keras's default).
- ``bf16``: the ``mixed_bfloat16`` policy: layers compute in bfloat16, variables stay float32.
  Same exponent range as float32, so no loss scaling. Fast on GPUs since Ampere and on CPUs
  with AVX512-BF16 / AMX (oneDNN).
- ``fp16``: the ``mixed_float16`` policy, for GPUs without bfloat16 (before Ampere). Small
  gradients underflow in float16, so the loss is scaled: Keras 3 wraps the optimizer in a
  dynamic ``LossScaleOptimizer`` by itself when a model with this policy is compiled
  (``Trainer.compile(auto_scale_loss=True)``); :func:`uses_loss_scaling` checks it.

Either way the classifier's softmax and the loss compute in float32: the ``predictions`` layer
of every triptych model is built with ``dtype="float32"`` (a softmax in 16 bits saturates and
its log underflows), and the trainer's loss is float32 (:func:`check_float32_outputs`).

Models are built under the policy (:func:`precision_scope`); the runner does that for the
whole experiment, so phase 1's head, the feature extractor and the fine-tuned model agree.
"""

from __future__ import annotations

import contextlib
from collections import Counter

import keras

from triptych.errors import InvalidArgumentError, TriptychError
from triptych.training.feature_cache import dtype_policy

PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def policy_name(precision: str) -> str:
    """The Keras dtype policy for a ``training.precision`` value."""
    if precision == "auto":
        raise InvalidArgumentError(
            "training.precision 'auto' must be resolved before models are built: pass "
            "triptych.training.precision_auto.resolve_precision('auto').precision (fp32, bf16 or fp16)"
        )
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise InvalidArgumentError(f"unknown training.precision {precision!r}; expected one of {', '.join(PRECISIONS)}") from None


@contextlib.contextmanager
def precision_scope(precision: str):
    """Build layers under the precision's dtype policy; the previous policy comes back after."""
    with dtype_policy(policy_name(precision)):
        yield


def check_float32_outputs(model) -> None:
    """Refuse a model whose outputs are not float32 (e.g. a softmax left in bfloat16)."""
    dtypes = [keras.backend.standardize_dtype(output.dtype) for output in model.outputs]
    if any(dtype != "float32" for dtype in dtypes):
        raise TriptychError(
            f"model {model.name} outputs {', '.join(dtypes)}: build its final softmax with dtype='float32' "
            "so that probabilities and the loss are computed in float32 under mixed precision"
        )


def compute_dtype(model) -> str:
    """The dtype most of the model's layers compute in (``float32``, ``bfloat16``, ``float16``)."""
    counts = Counter(
        layer.dtype_policy.compute_dtype for layer in model._flatten_layers(include_self=False) if layer.weights
    )
    return counts.most_common(1)[0][0] if counts else "float32"


def uses_loss_scaling(model) -> bool:
    """Whether the compiled model's optimizer scales the loss (fp16)."""
    return isinstance(getattr(model, "optimizer", None), keras.optimizers.LossScaleOptimizer)
