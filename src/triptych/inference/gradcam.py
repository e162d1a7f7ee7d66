"""Grad-CAM (Selvaraju et al., 2017): where in the image the evidence for a class lies.

The heat map is the ReLU of the feature maps of the last convolutional stage, weighted by the
spatially averaged gradient of the class score (the pre-softmax logit) with respect to them.
The stage is found automatically for every architecture of the registry:

- ResNets (flat functional models): the last ``stage4_block*_out`` layer;
- Xception / DenseNet-121: the output of the nested backbone model ``base``; the gradient model
  is rebuilt *through* the nested model (``base`` then the head layers), since a nested
  model's own ``output`` belongs to its inner graph, not to the outer one;
- anything else: the last layer with a 4-D (feature map) output.

``gradcam_for_run(run_dir)`` explains the most confident mistakes of a finished run and writes
their overlays into ``run_dir/gradcam/`` (with ``gradcam.json`` listing them) for the report.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import matplotlib
import numpy as np
import pandas as pd
import tensorflow as tf
from PIL import Image

from triptych.errors import InvalidArgumentError, MissingFileError
from triptych.inference.loading import (
    ImageError,
    LoadedModel,
    collect_images,
    load,
    read_image,
    read_images,
)
from triptych.io import atomic_write_bytes, atomic_write_json

GRADCAM_DIR = "gradcam"
OVERLAY_MIN_SIZE = 224  # small images (CIFAR's 32 px) are upscaled so the overlay can be seen
_RESNET_STAGE_OUT = re.compile(r"^stage(\d+)_block(\d+)_out$")
_RANKED_PNG = re.compile(r"^\d\d_.*\.png$")  # what gradcam_for_run writes


@dataclass
class GradCamModel:
    """A model that maps images to (feature maps, class scores, probabilities)."""

    model: Any  # keras.Model with outputs [features, penultimate, probabilities]
    layer: str  # human-readable name of the explained layer, e.g. "base" or "stage4_block2_out"
    logits_from: Any | None  # the final Dense layer when its softmax can be undone for logits
    # Traced (once, for every batch size) to explain many images; eager for a run's few mistakes,
    # where the trace of the gradient pass would be paid for a handful of images.
    traced: bool = True

    def __post_init__(self):
        # One trace for every batch size (the signature leaves the batch open): called eagerly with
        # batches of changing sizes, layers that Keras runs as their own tf.function (grouped
        # convolutions, e.g. ConvNeXt's) were traced again on every new size, and TensorFlow's
        # retracing warnings reached the user's log.
        signature = [tf.TensorSpec(self.model.inputs[0].shape, tf.float32), tf.TensorSpec([None], tf.int32)]
        step = self._feature_maps_and_gradients
        self._step = tf.function(step, input_signature=signature) if self.traced else step

    def __call__(self, batch: np.ndarray, class_indices: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Heat maps (n, h, w) in [0, 1] at feature-map resolution, and the probabilities (n, k)."""
        x = tf.convert_to_tensor(batch, dtype=tf.float32)
        # -1: the predicted class (one signature for both cases, so no second trace).
        chosen = np.full(len(batch), -1) if class_indices is None else np.asarray(class_indices)
        features, grads, probs = self._step(x, tf.convert_to_tensor(chosen, dtype=tf.int32))
        weights = tf.reduce_mean(grads, axis=(1, 2))  # (n, channels)
        cams = tf.nn.relu(tf.einsum("nhwc,nc->nhw", features, weights)).numpy()
        peak = cams.reshape(len(cams), -1).max(axis=1)
        cams = np.where(peak[:, None, None] > 0, cams / np.maximum(peak, 1e-12)[:, None, None], 0.0)
        return cams.astype(np.float32), np.asarray(probs, dtype=np.float32)

    def _feature_maps_and_gradients(self, x, class_indices):
        with tf.GradientTape() as tape:
            features, penultimate, probs = self.model(x, training=False)
            if self.logits_from is not None:
                dense = self.logits_from
                # In float32: a bf16 model's activations times the float32 kernel would take TensorFlow's
                # deprecated mixed-dtype sparse_matmul path (and its warning in the user's log).
                scores = tf.matmul(tf.cast(penultimate, dense.kernel.dtype), dense.kernel)
                if dense.bias is not None:
                    scores = scores + dense.bias
            else:
                scores = probs
            predicted = tf.argmax(probs, axis=-1, output_type=tf.int32)
            chosen = tf.where(class_indices >= 0, class_indices, predicted)
            # Samples are independent (inference mode), so one gradient of the sum gives each its own.
            score = tf.reduce_sum(tf.gather(scores, chosen, batch_dims=1))
        grads = tape.gradient(score, features)
        return tf.cast(features, tf.float32), tf.cast(grads, tf.float32), tf.cast(probs, tf.float32)


def find_target_layer(model) -> str:
    """The name of the layer whose output Grad-CAM explains (see the module docstring)."""
    nested = [
        layer for layer in model.layers if isinstance(layer, keras.Model) and len(layer.outputs[0].shape) == 4
    ]
    if nested:
        return nested[-1].name
    stage_outs = [
        (int(m.group(1)), int(m.group(2)), layer.name)
        for layer in model.layers
        if (m := _RESNET_STAGE_OUT.match(layer.name))
    ]
    if stage_outs:
        return max(stage_outs)[2]
    for layer in reversed(model.layers[:-1]):
        if _is_feature_map(layer):
            return layer.name
    raise InvalidArgumentError(f"{model.name}: no convolutional layer found for Grad-CAM; name one with layer=NAME")


def build_gradcam_model(model, layer: str | None = None, *, traced: bool = True) -> GradCamModel:
    """The gradient model for ``layer`` (default: :func:`find_target_layer`).

    ``layer`` may also name a layer inside a nested backbone (``conv5_block16_concat``).
    ``traced=False`` runs it eagerly: cheaper for a few images of one batch size.
    """
    name = layer or find_target_layer(model)
    final = model.layers[-1]
    logits_from = final if _is_softmax_dense(final) else None
    if name in [l.name for l in model.layers] and not isinstance(model.get_layer(name), keras.Model):
        target = _feature_map_layer(model, name)
        grad_model = keras.Model(model.inputs, [target.output, final.input, model.outputs[0]])
        return GradCamModel(grad_model, name, logits_from, traced)
    # The target is a nested model, or a layer inside one: rebuild the graph through it.
    base, inner_name = _locate_nested(model, name)
    grad_model = _through_nested(model, base, inner_name)
    return GradCamModel(grad_model, name if inner_name is None else f"{base.name}/{inner_name}", logits_from, traced)


def _feature_map_layer(model, name: str):
    target = model.get_layer(name)
    if not _is_feature_map(target):
        raise InvalidArgumentError(f"layer {name!r} of {model.name} has no 4-D feature map output; Grad-CAM needs one")
    return target


def _through_nested(model, base, inner_name: str | None):
    """``input -> base -> head`` rebuilt with the features of ``base`` (or of its layer
    ``inner_name``), the head's input and the probabilities as outputs."""
    top_names = [l.name for l in model.layers]
    base_index = top_names.index(base.name)
    head = [l for l in model.layers[base_index + 1 :] if not isinstance(l, keras.layers.InputLayer)]
    if base_index != 1 or not head:
        raise InvalidArgumentError(
            f"{model.name}: Grad-CAM through a nested model needs input -> {base.name} -> head layers "
            f"(found {', '.join(top_names)})"
        )
    inputs = keras.Input(shape=model.inputs[0].shape[1:], name="image")
    if inner_name is None:
        features = base_out = base(inputs)
    else:
        inner_target = _feature_map_layer(base, inner_name)
        inner = keras.Model(base.inputs, [inner_target.output, base.outputs[0]], name=f"{base.name}_gradcam")
        features, base_out = inner(inputs)
    x = base_out
    for head_layer in head[:-1]:
        x = head_layer(x)
    outputs = head[-1](x)
    return keras.Model(inputs, [features, x, outputs], name=f"{model.name}_gradcam")


def _locate_nested(model, name: str):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            if layer.name == name:
                return layer, None
            if name in [l.name for l in layer.layers]:
                return layer, name
    raise InvalidArgumentError(f"{model.name} has no layer {name!r} (also searched its nested models)")


def _is_feature_map(layer) -> bool:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return False
    return len(shape) == 4


def _is_softmax_dense(layer) -> bool:
    activation = getattr(layer, "activation", None)
    return isinstance(layer, keras.layers.Dense) and getattr(activation, "__name__", "") == "softmax"


# --------------------------------------------------------------------------- overlays


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45, cmap: str = "jet", min_size: int = OVERLAY_MIN_SIZE) -> np.ndarray:
    """Blend a heat map (any resolution, values in [0, 1]) over a uint8 RGB image; small images are upscaled."""
    height, width = image.shape[:2]
    scale = max(1, int(np.ceil(min_size / max(1, min(height, width)))))
    size = (width * scale, height * scale)
    base = Image.fromarray(image.astype(np.uint8))
    if scale > 1:
        base = base.resize(size, Image.Resampling.BICUBIC)
    heat = np.asarray(Image.fromarray(cam.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))
    colours = matplotlib.colormaps[cmap](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * np.asarray(base, dtype=np.float32) + alpha * colours
    return np.clip(blended, 0, 255).astype(np.uint8)


def upsample(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """A heat map resized (bilinearly) to an image's size."""
    return np.asarray(Image.fromarray(cam.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR))


def write_png(path: str | os.PathLike, pixels: np.ndarray) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


# --------------------------------------------------------------------------- high-level API


def explain(
    run_or_model: str | os.PathLike | LoadedModel,
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    layer: str | None = None,
    class_name: str | None = None,
    batch_size: int = 16,
    preprocessing: str | None = None,
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Write one Grad-CAM overlay PNG per image into ``out_dir``.

    Returns ``(explained, skipped)``: dicts with ``path``, ``label``, ``probability``,
    ``explained`` (the class the map is for), ``layer`` and ``overlay``; and
    ``(path, reason)`` for images that could not be read.
    """
    if out_dir is None:
        raise InvalidArgumentError("out_dir is required: the folder for the overlays of the images")
    if batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be at least 1, got {batch_size}")
    files = collect_images([paths] if isinstance(paths, (str, os.PathLike)) else paths)
    loaded = load(run_or_model, preprocessing)
    class_index = _class_index(loaded, class_name)
    gradcam = build_gradcam_model(loaded.model, layer)
    names = _unique_names(files)
    explained, skipped = [], []
    for start in range(0, len(files), batch_size):
        images, kept, unreadable = read_images(files[start : start + batch_size])
        skipped += unreadable
        if images:
            pngs = [Path(out_dir) / f"{names[path]}_gradcam.png" for path in kept]
            explained += _explain_batch(loaded, gradcam, kept, images, pngs, class_index)
    if not explained:
        first = skipped[0] if skipped else ("?", "?")
        raise InvalidArgumentError(f"none of the {len(files)} image(s) could be read (first: {first[0]}: {first[1]})")
    return explained, skipped


def _class_index(loaded: LoadedModel, class_name: str | None) -> int | None:
    if class_name is None:
        return None
    if class_name not in loaded.class_names:
        raise InvalidArgumentError(
            f"class_name must be one of the model's classes ({', '.join(loaded.class_names)}), got {class_name!r}"
        )
    return loaded.class_names.index(class_name)


def _explain_batch(
    loaded: LoadedModel,
    gradcam: GradCamModel,
    paths: list[Path],
    images: list[np.ndarray],
    pngs: list[Path],
    class_index: int | None,
) -> list[dict]:
    """Overlays of one batch, for ``class_index`` or else each image's predicted class."""
    chosen = None if class_index is None else np.full(len(images), class_index)
    cams, probs = gradcam(loaded.preprocess(images), chosen)
    explained = []
    for path, image, cam, row, png in zip(paths, images, cams, probs, pngs):
        predicted = int(np.argmax(row))
        explained.append(
            {
                "path": str(path),
                "label": loaded.class_names[predicted],
                "probability": float(np.max(row)),
                "explained": loaded.class_names[predicted if class_index is None else class_index],
                "layer": gradcam.layer,
                "overlay": str(write_png(png, overlay(image, cam))),
            }
        )
    return explained


def gradcam_for_run(
    run_dir: str | os.PathLike, n: int = 4, out_dir: str | os.PathLike | None = None, *, layer: str | None = None,
    model: Any | None = None,
) -> list[tuple[str, str, str, float, str]]:
    """Grad-CAM overlays of the ``n`` most confident mistakes in ``run_dir/predictions.csv``.

    Writes them to ``run_dir/gradcam/`` (or ``out_dir``; earlier ``NN_*.png`` overlays there are
    replaced), with ``gradcam.json`` listing them (overlay file names relative to it),
    and returns ``(path, true, pred, prob, overlay_png_path)`` tuples, most confident first.
    Fewer than ``n`` come back when the run made fewer mistakes (or some images are gone).
    The map explains the predicted (wrong) class: what the model looked at to get it wrong.
    ``model``: the run's model already in memory (as ``model.keras`` holds it), to skip reading it.
    """
    if n < 1:
        raise InvalidArgumentError(f"n must be at least 1, got {n}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise (InvalidArgumentError if run_dir.exists() else MissingFileError)(
            f"{run_dir}: not a run directory; to explain a model file, name the images to explain"
        )
    mistakes = _confident_mistakes(run_dir / "predictions.csv")
    loaded = load(run_dir, model=model)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / GRADCAM_DIR
    gradcam = build_gradcam_model(loaded.model, layer, traced=False)  # n images, one at a time
    _remove_ranked_overlays(out_dir)
    chosen: list[tuple[str, str, str, float, str]] = []
    for _, row in mistakes.iterrows():
        if len(chosen) >= n:
            break
        try:
            image = read_image(row["path"])
        except ImageError:
            continue  # the image moved or was in memory only: take the next mistake
        chosen.append(_explain_mistake(loaded, gradcam, row, image, out_dir, rank=len(chosen) + 1))
    _write_index(out_dir, gradcam.layer, chosen)
    return chosen


def _confident_mistakes(csv_path: Path) -> pd.DataFrame:
    """The wrong rows of predictions.csv, most confident first, with a ``confidence`` column:
    the probability the model gave its (wrong) prediction."""
    if not csv_path.is_file():
        raise MissingFileError(f"{csv_path}: no predictions (has the run finished its test evaluation?)")
    try:
        frame = pd.read_csv(csv_path, dtype={"path": str, "y_true": str, "y_pred": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InvalidArgumentError(f"{csv_path}: cannot read predictions ({err.__class__.__name__})") from err
    missing = [c for c in ("path", "y_true", "y_pred") if c not in frame.columns]
    if missing:
        raise InvalidArgumentError(f"{csv_path}: missing column(s) {', '.join(missing)}")
    mistakes = frame[frame["y_true"] != frame["y_pred"]].copy()
    mistakes["confidence"] = [
        float(mistakes.at[i, f"prob_{pred}"]) if f"prob_{pred}" in mistakes.columns else np.nan
        for i, pred in zip(mistakes.index, mistakes["y_pred"])
    ]
    return mistakes.sort_values("confidence", ascending=False, kind="stable")


def _remove_ranked_overlays(out_dir: Path) -> None:
    """Overlays of an earlier call would mix with this one's."""
    if out_dir.is_dir():
        for old in out_dir.iterdir():
            if _RANKED_PNG.match(old.name):
                old.unlink()


def _explain_mistake(
    loaded: LoadedModel, gradcam: GradCamModel, row: pd.Series, image: np.ndarray, out_dir: Path, rank: int
) -> tuple[str, str, str, float, str]:
    """The overlay of one mistake, for its predicted class, as ``NN_<stem>_true-<y>_pred-<y>.png``."""
    pred_index = loaded.class_names.index(row["y_pred"]) if row["y_pred"] in loaded.class_names else None
    cams, probs = gradcam(loaded.preprocess([image]), None if pred_index is None else np.array([pred_index]))
    stem = _safe_stem(Path(str(row["path"])).stem)
    name = f"{rank:02d}_{stem}_true-{_safe_stem(row['y_true'])}_pred-{_safe_stem(row['y_pred'])}.png"
    png = write_png(out_dir / name, overlay(image, cams[0]))
    prob = float(row["confidence"]) if np.isfinite(row["confidence"]) else float(np.max(probs[0]))
    return str(row["path"]), str(row["y_true"]), str(row["y_pred"]), prob, str(png)


def _write_index(out_dir: Path, layer: str, chosen: list[tuple[str, str, str, float, str]]) -> None:
    atomic_write_json(
        out_dir / "gradcam.json",
        {
            "layer": layer,
            "explains": "the predicted class of the most confident mistakes",
            # overlay: the PNG's file name, relative to this file's folder
            "items": [
                {"path": path, "true": true, "pred": pred, "prob": prob, "overlay": Path(png).name}
                for path, true, pred, prob, png in chosen
            ],
        },
    )


def _safe_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text))[:60] or "image"


def _unique_names(files: list[Path]) -> dict[Path, str]:
    """Output file stems: the image's stem, made unique when two images share one."""
    names: dict[Path, str] = {}
    used: set[str] = set()
    for path in files:
        stem = _safe_stem(path.stem)
        candidate, i = stem, 1
        while candidate in used:
            i += 1
            candidate = f"{stem}_{i}"
        used.add(candidate)
        names[path] = candidate
    return names
