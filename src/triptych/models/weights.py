"""Where a model's weights come from, in one place.

``weights="imagenet"`` first looks under ``$TRIPTYCH_WEIGHTS`` (an offline mirror, like
``$TRIPTYCH_MIRROR`` for data) for the file Keras itself would download for that backbone
(e.g. ``xception_weights_tf_dim_ordering_tf_kernels_notop.h5``), then for
``<application>_imagenet_notop.weights.h5`` (the backbone saved with Keras 3's
``save_weights``), and only then lets Keras download it. A local weights file is loaded with
one clear line when it does not fit. :func:`weights_origin` says which was used.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from triptych.errors import InvalidArgumentError, MissingFileError
from triptych.models.catalog import ModelSpec

WEIGHTS_ENV = "TRIPTYCH_WEIGHTS"
# keras.applications picks the MobileNet V1/V2 file by the (square) input height, else 224's.
_HEIGHTS_WITH_OWN_FILE = {"MobileNet": (128, 160, 192, 224), "MobileNetV2": (96, 128, 160, 192, 224)}


def imagenet_file_names(spec: ModelSpec, input_shape: tuple[int, int, int]) -> list[str]:
    """The file names ``weights="imagenet"`` looks for under ``$TRIPTYCH_WEIGHTS``, in order."""
    if not spec.application or not spec.imagenet_file:
        return []
    height, width = input_shape[:2]
    rows = height if height == width and height in _HEIGHTS_WITH_OWN_FILE.get(spec.application, ()) else 224
    return [spec.imagenet_file.format(rows=rows), f"{spec.application.lower()}_imagenet_notop.weights.h5"]


def find_imagenet_file(spec: ModelSpec, input_shape: tuple[int, int, int]) -> Path | None:
    """The ImageNet weights file for ``spec`` under ``$TRIPTYCH_WEIGHTS``, or None."""
    root = os.environ.get(WEIGHTS_ENV)
    if not root:
        return None
    for name in imagenet_file_names(spec, input_shape):
        path = Path(root).expanduser() / name
        if path.is_file():
            return path
    return None


def imagenet_backbone(spec: ModelSpec, make: Callable[..., Any], input_shape: tuple[int, int, int]):
    """``make`` (a keras.applications builder) without its top, with ImageNet weights: from the
    mirror if it has them, else downloaded by Keras (cached in ``~/.keras/models``)."""
    local = find_imagenet_file(spec, input_shape)
    if local is not None:
        backbone = make(include_top=False, weights=None, input_shape=input_shape)
        load_weights_file(backbone, local, spec.name)
        return backbone
    try:
        return make(include_top=False, weights="imagenet", input_shape=input_shape)
    except Exception as err:  # a failed download surfaces as many exception types
        root = os.environ.get(WEIGHTS_ENV) or "not set"
        raise MissingFileError(
            f"weights='imagenet' for {spec.name}: no {imagenet_file_names(spec, input_shape)[0]} under "
            f"${WEIGHTS_ENV} ({root}) and Keras could not download it ({err.__class__.__name__}: {_first_line(err)}); "
            "put the file there, or pass weights=None (random) or a weights file path"
        ) from err


def load_weights_file(model, path: str | Path, model_name: str) -> None:
    """Load a Keras weights file into ``model`` (registry model ``model_name``); a file of another
    architecture is one line naming both."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(str(path))
        except Exception as err:  # keras raises ValueError / KeyError / OSError depending on the mismatch
            raise _does_not_fit(path, model_name, _first_line(err)) from err
    # Keras only *warns* when parts of the file match nothing: that is a half-loaded model, refuse it.
    skipped = [w for w in caught if "Skipping" in str(w.message) or "mismatch" in str(w.message).lower()]
    if skipped:
        detail = f"{len(skipped)} part(s) of the file match no layer (first: {_first_line(skipped[0].message)})"
        raise _does_not_fit(path, model_name, detail)


def _does_not_fit(path: str | Path, model_name: str, detail: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"weights file {path} does not fit model {model_name}: {detail}")


def weights_origin(weights: str | None, spec: ModelSpec | None = None, input_shape=None) -> str:
    """How the manifest and the report describe where a model's weights came from. With the
    model's ``spec`` and ``input_shape``, ImageNet weights say whether the mirror had them."""
    if not weights:
        return "random"
    if weights == "imagenet":
        local = find_imagenet_file(spec, tuple(input_shape or spec.default_input_shape)) if spec else None
        if local is None:
            return "imagenet"
        return f"imagenet (${WEIGHTS_ENV}/{local.name}, sha256 {file_sha256(local)[:16]})"
    return f"local file {Path(weights).name} (sha256 {file_sha256(weights)[:16]})"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _first_line(error: Any) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else error.__class__.__name__
