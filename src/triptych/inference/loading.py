"""Load a trained model for inference, safely, with everything needed to feed it.

``load(run_or_model)`` accepts a run directory (``DIR/<exp>/`` with ``model.keras``) or a bare
``.keras`` file and returns a :class:`LoadedModel`: the Keras model, its class names, its input
size and the name of its preprocessing (the registry's, so that inference normalises images
exactly as training did).

Models are only ever loaded with ``keras.saving.load_model(..., safe_mode=True)``: a file
that would run arbitrary Python code (a ``Lambda`` layer) is refused before Keras reads it,
and nothing is ever unpickled. Every way a file can be wrong ends in one
:class:`~triptych.errors.TriptychError` line.

Image files are listed, checked, decoded and resized by ``triptych.data.images``, exactly as
training does.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from triptych.data.images import IMAGE_EXTENSIONS, ImageError, list_images, resize
from triptych.data.images import read_image as read_image_file
from triptych.errors import InvalidArgumentError, MissingFileError, TriptychError
from triptych.models.registry import MODELS

NO_PREPROCESSING = "none"  # images go in as float32 0..255 (a model that normalises itself)
MODEL_FILE = "model.keras"
# Layer classes whose config carries Python code; Keras's safe mode refuses them too, but we
# refuse first, with a message that says what to do.
UNSAFE_LAYERS = ("Lambda",)
# In-memory examples (keras.datasets) are named like this in predictions.csv (see triptych.data.sources).
_IN_MEMORY_ID = re.compile(r"^\w+/(train|test)/\d+$")


@dataclass
class LoadedModel:
    """A Keras classifier plus what it takes to use it on image files."""

    model: Any  # keras.Model
    class_names: list[str]
    preprocessing: str  # a key of triptych.data.preprocessing.PREPROCESSORS, or "none"
    image_size: tuple[int, int]  # (height, width) the model expects
    source: Path  # the .keras file
    run_dir: Path | None = None  # the run directory, when there is one
    model_name: str | None = None  # registry name, when known
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 RGB images of any size -> the float32 batch the model takes (resized as in training)."""
        return preprocess_images(images, self.image_size, self.preprocessing)

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities for an already preprocessed batch."""
        return np.asarray(self.model.predict_on_batch(batch), dtype=np.float32)


def load(
    run_or_model: str | os.PathLike | LoadedModel, preprocessing: str | None = None, *, model: Any | None = None
) -> LoadedModel:
    """Load a run directory or a ``.keras`` file for inference.

    Args:
        run_or_model: a run directory (holding ``model.keras``), a ``.keras`` file, or an
            already loaded :class:`LoadedModel` (returned as is).
        preprocessing: overrides the preprocessing named by the run (``torch``, ``tf``,
            ``caffe`` or ``none``); needed for a bare ``.keras`` file whose architecture is unknown.
        model: the Keras model that ``model.keras`` holds, already in memory (the runner's, which
            has just saved it): used instead of reading the file again (DenseNet-121: ~5 s).
    """
    if isinstance(run_or_model, LoadedModel):
        return run_or_model
    path = Path(run_or_model).expanduser()
    if path.is_dir():
        model_path = path / MODEL_FILE
        if not model_path.is_file():
            raise MissingFileError(f"{path}: not a run directory (no {MODEL_FILE}; has the run finished training?)")
        meta_dir = path
    else:
        model_path = path
        meta_dir = path.parent
    is_run = path.is_dir() or any((meta_dir / name).is_file() for name in ("manifest.json", "metrics.json"))
    run_dir = meta_dir if is_run else None
    manifest = _read_json(meta_dir / "manifest.json")
    metrics = _read_json(meta_dir / "metrics.json")
    model = load_keras_model(model_path) if model is None else model

    num_classes = _output_size(model, model_path)
    class_names = manifest.get("class_names") or metrics.get("class_names")
    if class_names is None:
        class_names = [f"class_{i}" for i in range(num_classes)]
    else:
        class_names = [str(c) for c in class_names]
        origin = "manifest.json" if manifest.get("class_names") else "metrics.json"
        if len(class_names) != num_classes:
            raise TriptychError(
                f"{meta_dir / origin} lists {len(class_names)} class names but {model_path.name} has "
                f"{num_classes} outputs: the model and its run files do not belong together"
            )
    model_name = manifest.get("model") or metrics.get("model")
    return LoadedModel(
        model=model,
        class_names=class_names,
        preprocessing=_resolve_preprocessing(preprocessing, manifest.get("preprocessing"), model_name, model, model_path),
        image_size=_input_size(model, manifest, model_path),
        source=model_path,
        run_dir=run_dir,
        model_name=model_name if model_name else None,
        manifest=manifest,
    )


def load_keras_model(path: str | os.PathLike):
    """``keras.saving.load_model(path, safe_mode=True)`` with every failure as one clear line."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: no such file or directory")
    if not path.is_file():
        raise TriptychError(f"{path}: not a model file (expected a .keras file or a run directory)")
    if path.suffix in (".h5", ".hdf5"):
        raise TriptychError(f"{path}: legacy HDF5 models are not supported here; re-save the model in the .keras format")
    if path.suffix != ".keras":
        raise TriptychError(f"{path}: not a model file (expected a Keras 3 .keras file or a run directory)")
    config = _read_keras_config(path)
    unsafe = sorted(_unsafe_layers(config))
    if unsafe:
        raise TriptychError(
            f"{path}: refused to load: it contains a Lambda layer ({', '.join(unsafe)}), which runs arbitrary "
            "Python code; re-save the model with built-in layers only"
        )
    import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as err:  # Keras raises ValueError, TypeError, OSError, KeyError ... by cause
        message = _first_line(err)
        if "safe_mode" in message or "arbitrary code" in message:
            raise TriptychError(f"{path}: refused to load: it would run arbitrary Python code ({message[:200]})") from err
        raise TriptychError(f"{path}: cannot load the model ({err.__class__.__name__}: {message[:300]})") from err


def _read_keras_config(path: Path) -> dict[str, Any]:
    """The architecture JSON inside a .keras zip, after checking that the archive is whole."""
    if not zipfile.is_zipfile(path):
        raise TriptychError(f"{path}: not a valid .keras file (not a zip archive: corrupted, truncated or another format)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = [n for n in ("config.json", "model.weights.h5") if n not in names]
            if missing:
                raise TriptychError(f"{path}: not a valid .keras file (no {', '.join(missing)} inside)")
            broken = archive.testzip()
            if broken is not None:
                raise TriptychError(f"{path}: corrupted .keras file ({broken} fails its checksum)")
            return json.loads(archive.read("config.json"))
    except TriptychError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as err:
        raise TriptychError(f"{path}: corrupted or truncated .keras file ({err.__class__.__name__}: {_first_line(err)})") from err


def _unsafe_layers(config: Any) -> set[str]:
    """Names of layers in a (possibly nested) Keras config whose class runs Python code."""
    found: set[str] = set()
    if isinstance(config, dict):
        if config.get("class_name") in UNSAFE_LAYERS:
            inner = config.get("config")
            found.add(str(inner.get("name", config["class_name"])) if isinstance(inner, dict) else config["class_name"])
        for value in config.values():
            found |= _unsafe_layers(value)
    elif isinstance(config, list):
        for value in config:
            found |= _unsafe_layers(value)
    return found


def _output_size(model, path: Path) -> int:
    outputs = model.outputs if getattr(model, "outputs", None) else None
    if not outputs or len(outputs) != 1 or len(outputs[0].shape) != 2 or outputs[0].shape[-1] is None:
        shapes = [tuple(o.shape) for o in outputs] if outputs else "unknown"
        raise TriptychError(f"{path}: not an image classifier (output shape {shapes}; expected (batch, classes))")
    return int(outputs[0].shape[-1])


def _input_size(model, manifest: dict[str, Any], path: Path) -> tuple[int, int]:
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[-1] != 3:
        shapes = [tuple(i.shape) for i in inputs] if inputs else "unknown"
        raise TriptychError(f"{path}: not an image classifier (input shape {shapes}; expected (batch, height, width, 3))")
    height, width = inputs[0].shape[1], inputs[0].shape[2]
    if height and width:
        return int(height), int(width)
    if manifest.get("image_size"):
        size = int(manifest["image_size"])
        return size, size
    raise TriptychError(f"{path}: the model accepts any image size and no manifest.json says which one it was trained at")


def _resolve_preprocessing(
    explicit: str | None, recorded: str | None, model_name: str | None, model, path: Path
) -> str:
    """The caller's choice, else what the run recorded (it depends on the weights: ImageNet
    resnet50 is "caffe", a from-scratch one "torch"), else the registry's default for the model."""
    from triptych.data.preprocessing import PREPROCESSORS  # imports Keras

    valid = sorted({*PREPROCESSORS, NO_PREPROCESSING})
    if explicit:
        if explicit not in valid:
            raise InvalidArgumentError(f"unknown preprocessing {explicit!r}; valid: {', '.join(valid)}")
        return explicit
    if recorded in valid:
        return recorded
    for name in (model_name, getattr(model, "name", None)):
        if name in MODELS:
            return MODELS[name].preprocessing
    raise InvalidArgumentError(
        f"{path}: cannot tell which preprocessing the model was trained with (no manifest.json naming a registered "
        f"model next to it); pass preprocessing= one of {', '.join(valid)}"
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TriptychError(f"{path}: unreadable JSON ({err.__class__.__name__}: {_first_line(err)})") from err
    if not isinstance(data, dict):
        raise TriptychError(f"{path}: expected a JSON object")
    return data


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else err.__class__.__name__


# --------------------------------------------------------------------------- images


def collect_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files named directly, plus those found (recursively, sorted) in the folders named.

    A named file is kept whatever its extension (decoding decides); folders contribute files
    with an image extension. A missing path or a folder without images is a user error.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise InvalidArgumentError(
                    f"{path}: no images in this folder ({', '.join(IMAGE_EXTENSIONS)}, searched recursively)"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise MissingFileError(f"{path}: no such file or folder")
    if not files:
        raise InvalidArgumentError("no images given")
    return list(dict.fromkeys(files))  # drop duplicates, keep order


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as a uint8 RGB array; :class:`ImageError` if it cannot be read or decoded."""
    if not Path(path).is_file() and _IN_MEMORY_ID.match(str(path).replace(os.sep, "/")):
        # keras.datasets keeps these as pickles: inference never unpickles anything.
        raise ImageError("an in-memory dataset image (keras.datasets), not a file")
    return read_image_file(path)


def read_images(paths: Sequence[str | os.PathLike]) -> tuple[list[np.ndarray], list, list[tuple[str, str]]]:
    """Decode a batch of files: ``(images, the paths they came from, [(path, why) unreadable])``."""
    images, kept, unreadable = [], [], []
    for path in paths:
        try:
            images.append(read_image(path))
            kept.append(path)
        except ImageError as err:
            unreadable.append((str(path), str(err)))
    return images, kept, unreadable


def preprocess_images(images: Sequence[np.ndarray], size: tuple[int, int], preprocessing: str) -> np.ndarray:
    """Resize (exactly as the training pipeline does) and normalise a list of uint8 images."""
    height, width = size
    batch = np.stack([resize(image, height, width).numpy() for image in images]).astype(np.float32)
    if preprocessing == NO_PREPROCESSING:
        return batch
    from triptych.data.preprocessing import get_preprocessor

    return np.asarray(get_preprocessor(preprocessing)(batch), dtype=np.float32)
