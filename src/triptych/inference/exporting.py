"""Export a trained model to TF SavedModel, ONNX or TFLite, and prove the export computes the same.

Every export is checked against the Keras model on sample inputs (real images from the run's
``predictions.csv`` when they can be read, else random images), through the runtime that will
serve it: ``tf.saved_model.load``, onnxruntime, or the LiteRT / TFLite interpreter. A float32
export must agree to ``FP32_TOLERANCE`` or nothing is written. Quantised TFLite exports
(``float16``, ``int8``) cannot agree that closely: their parity is reported, not enforced.

The exported model takes *preprocessed* float32 NHWC batches, exactly like the Keras model;
a ``<out>.json`` sidecar (``triptych.json`` inside a SavedModel) records the class names,
input size and preprocessing a serving application must apply.

Writes are atomic: the export is built in a temporary folder beside ``out`` and renamed onto
``out`` only after the parity check passed.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from triptych.errors import InvalidArgumentError, TriptychError
from triptych.inference.loading import ImageError, LoadedModel, load, read_image
from triptych.io import atomic_write_json

FORMATS = ("savedmodel", "onnx", "tflite")
QUANTIZATIONS = ("float16", "int8")
FP32_TOLERANCE = 1e-4
DEFAULT_SAMPLES = 16
REPRESENTATIVE_IMAGES = 100  # images that calibrate int8 activation ranges
METADATA_NAME = "triptych.json"  # inside a SavedModel directory


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    top1_agree: int
    n: int
    inputs: str  # what the samples were, e.g. "real images" or "random images"

    @property
    def top1_rate(self) -> float:
        return self.top1_agree / self.n if self.n else float("nan")

    def line(self) -> str:
        return (
            f"parity: max |diff| = {self.max_abs_diff:.3g}, top-1 agreement = {self.top1_agree}/{self.n} "
            f"({self.top1_rate:.1%}) on {self.n} {self.inputs}"
        )


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    quantize: str | None
    parity: Parity
    seconds: float
    size_bytes: int
    metadata: Path


def export(
    run_or_model: str | os.PathLike | LoadedModel,
    fmt: str,
    out: str | os.PathLike,
    *,
    quantize: str | None = None,
    samples: int = DEFAULT_SAMPLES,
    overwrite: bool = False,
    preprocessing: str | None = None,
    tolerance: float = FP32_TOLERANCE,
) -> ExportResult:
    """Export ``run_or_model`` as ``fmt`` (``savedmodel``, ``onnx``, ``tflite``) to ``out``.

    Raises :class:`TriptychError` (and writes nothing) when a float32 export's outputs differ
    from the Keras model's by more than ``tolerance``.
    """
    out = Path(out).expanduser()
    _check_arguments(fmt, out, quantize, samples, overwrite)
    loaded = load(run_or_model, preprocessing)
    inputs, described = sample_inputs(loaded, samples)
    started = time.perf_counter()
    # Keras's ONNX export needs a model that has been called on a batch; this is also the reference.
    reference = loaded.predict_batch(inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        artifact = workdir / out.name
        with _quiet():
            outputs = _write_and_run(fmt, loaded, artifact, workdir, quantize, inputs)
        parity = compare(reference, outputs, described)
        if quantize is None and not parity.max_abs_diff <= tolerance:
            raise TriptychError(
                f"{fmt} export does not match the Keras model: max |diff| = {parity.max_abs_diff:.3g} > {tolerance:g} "
                f"(top-1 agreement {parity.top1_agree}/{parity.n}); nothing was written to {out}"
            )
        metadata_path = (artifact / METADATA_NAME) if fmt == "savedmodel" else out.with_name(out.name + ".json")
        atomic_write_json(metadata_path, _metadata(loaded, fmt, quantize, parity))
        _move_into_place(artifact, out, workdir)
        size = _size(out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return ExportResult(
        path=out,
        format=fmt,
        quantize=quantize,
        parity=parity,
        seconds=time.perf_counter() - started,
        size_bytes=size,
        metadata=out / METADATA_NAME if fmt == "savedmodel" else metadata_path,
    )


def _check_arguments(fmt: str, out: Path, quantize: str | None, samples: int, overwrite: bool) -> None:
    """Everything that can be refused before the model is loaded."""
    if fmt not in FORMATS:
        raise InvalidArgumentError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise InvalidArgumentError(f"quantize must be None or one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    if quantize and fmt != "tflite":
        raise InvalidArgumentError(f"quantize applies to fmt=tflite only, not {fmt}")
    if samples < 1:
        raise InvalidArgumentError(f"samples must be at least 1, got {samples}")
    if out.exists() and not overwrite:
        raise InvalidArgumentError(f"{out} already exists; pass overwrite=True to replace it")
    if fmt == "onnx":
        _require_onnx()


def _write_and_run(
    fmt: str, loaded: LoadedModel, artifact: Path, workdir: Path, quantize: str | None, inputs: np.ndarray
) -> np.ndarray:
    """Write the export to ``artifact`` and run ``inputs`` through it, in the runtime that serves it."""
    if fmt == "savedmodel":
        _export_savedmodel(loaded.model, artifact)
        return _run_savedmodel(artifact, inputs)
    if fmt == "onnx":
        _export_onnx(loaded.model, artifact)
        return _run_onnx(artifact, inputs)
    _export_tflite(loaded, artifact, workdir / "_savedmodel", quantize)
    return _run_tflite(artifact, inputs)


def _metadata(loaded: LoadedModel, fmt: str, quantize: str | None, parity: Parity) -> dict:
    """The sidecar a serving application reads: classes, input size and preprocessing."""
    return {
        "source": str(loaded.source),
        "model": loaded.model_name,
        "format": fmt,
        "quantize": quantize,
        "class_names": loaded.class_names,
        "input": {
            "shape": [None, *loaded.image_size, 3],
            "dtype": "float32",
            "preprocessing": loaded.preprocessing,
            "note": "the model takes preprocessed images: resize to the input size, then apply the preprocessing",
        },
        "parity": asdict(parity),
    }


def _move_into_place(artifact: Path, out: Path, workdir: Path) -> None:
    if out.exists() and (out.is_dir() or artifact.is_dir()):  # overwrite: a folder is moved aside first
        os.replace(out, workdir / "replaced")
    os.replace(artifact, out)  # a file (or symlink) is replaced atomically


def compare(reference: np.ndarray, outputs: np.ndarray, inputs: str) -> Parity:
    outputs = np.asarray(outputs, dtype=np.float32).reshape(reference.shape)
    diff = float(np.max(np.abs(outputs - reference))) if np.all(np.isfinite(outputs)) else float("inf")
    agree = int(np.sum(np.argmax(outputs, axis=1) == np.argmax(reference, axis=1)))
    return Parity(diff, agree, len(reference), inputs)


def sample_inputs(loaded: LoadedModel, n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """Up to ``n`` preprocessed real images from the run's predictions.csv, else ``n`` random ones."""
    images = _run_images(loaded, n, ("predictions.csv",))
    if images:
        return loaded.preprocess(images), f"real image{'s' if len(images) != 1 else ''} from predictions.csv"
    rng = np.random.default_rng(seed)
    height, width = loaded.image_size
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]
    return loaded.preprocess(images), "random images (no readable images in the run's predictions.csv)"


def _run_images(loaded: LoadedModel, n: int, sources: tuple[str, ...]) -> list[np.ndarray]:
    """Readable images listed in the run's CSV files (``path`` column), in order, at most ``n``."""
    if loaded.run_dir is None:
        return []
    images: list[np.ndarray] = []
    for name in sources:
        csv_path = loaded.run_dir / name
        if not csv_path.is_file():
            continue
        try:
            frame = pd.read_csv(csv_path, dtype=str)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
        if "path" not in frame.columns:
            continue
        if "split" in frame.columns:  # split.csv: calibrate on training images
            frame = frame[frame["split"] == "train"]
        for path in frame["path"].dropna():
            if len(images) >= n:
                return images
            try:
                images.append(read_image(path))
            except ImageError:
                continue
    return images


# --------------------------------------------------------------------------- the three formats


def _export_savedmodel(model, path: Path) -> None:
    try:
        model.export(str(path), format="tf_saved_model", verbose=False)
    except Exception as err:  # conversion errors come as many exception types
        raise TriptychError(f"SavedModel export failed ({err.__class__.__name__}: {_first_line(err)})") from err


def _run_savedmodel(path: Path, inputs: np.ndarray) -> np.ndarray:
    restored = tf.saved_model.load(str(path))
    # The serving signature, as a deployment calls it: by input name, outputs as a dict.
    serving = restored.signatures["serving_default"]
    (name,) = serving.structured_input_signature[1]
    outputs = serving(**{name: tf.constant(inputs)})
    if len(outputs) != 1:
        raise TriptychError(f"the SavedModel has {len(outputs)} outputs; expected one (the class probabilities)")
    return np.asarray(next(iter(outputs.values())))


def _require_onnx() -> None:
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError as err:
        raise TriptychError(
            f"ONNX export needs tf2onnx and onnxruntime ({err.name} is missing): pip install tf2onnx==1.17.0 onnxruntime==1.32.0"
        ) from err


def _export_onnx(model, path: Path) -> None:
    try:
        model.export(str(path), format="onnx", verbose=False)
    except Exception as err:
        raise TriptychError(f"ONNX export failed ({err.__class__.__name__}: {_first_line(err)})") from err


def _run_onnx(path: Path, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def _export_tflite(loaded: LoadedModel, path: Path, savedmodel_dir: Path, quantize: str | None) -> None:
    _export_savedmodel(loaded.model, savedmodel_dir)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(savedmodel_dir))
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        calibration = representative_inputs(loaded)

        def representative_dataset():
            for i in range(len(calibration)):
                yield [calibration[i : i + 1]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        # Integer weights and activations inside; float32 in and out, so it drops in for the float model.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        flatbuffer = converter.convert()
    except Exception as err:
        raise TriptychError(f"TFLite conversion failed ({err.__class__.__name__}: {_first_line(err)})") from err
    path.write_bytes(flatbuffer)


def representative_inputs(loaded: LoadedModel, n: int = REPRESENTATIVE_IMAGES) -> np.ndarray:
    """Calibration images for int8: the run's training images (split.csv), else its test images,
    else random images (which calibrate poorly: the parity line will show it)."""
    images = _run_images(loaded, n, ("split.csv", "predictions.csv"))
    if images:
        return loaded.preprocess(images)
    rng = np.random.default_rng(1)
    height, width = loaded.image_size
    return loaded.preprocess([rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(min(n, 32))])


def _tflite_interpreter(path: Path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # fall back to TensorFlow's own (deprecated) interpreter
        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=str(path))


def _run_tflite(path: Path, inputs: np.ndarray) -> np.ndarray:
    interpreter = _tflite_interpreter(path)
    (inp,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(inp["index"], list(inputs.shape))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    x = inputs
    if inp["dtype"] != np.float32:  # a fully integer model: quantise the input
        scale, zero = inp["quantization"]
        x = np.clip(np.round(inputs / scale + zero), np.iinfo(inp["dtype"]).min, np.iinfo(inp["dtype"]).max)
    interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interpreter.invoke()
    y = interpreter.get_tensor(out["index"])
    if out["dtype"] != np.float32:
        scale, zero = out["quantization"]
        y = (y.astype(np.float32) - zero) * scale
    return y


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _quiet():
    """Keep the converters' chatter off the terminal: Python prints and warnings, and what the
    TFLite converter and interpreter write straight to file descriptors 1 and 2 from C++
    ("fully_quantize: 0 ...", "INFO: Created TensorFlow Lite XNNPACK delegate ...").
    Failures still surface: as exceptions, which become one TriptychError line."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = []
    try:
        with tempfile.TemporaryFile() as sink:
            try:
                for fd in (1, 2):
                    saved.append((fd, os.dup(fd)))
                    os.dup2(sink.fileno(), fd)
            except OSError:  # no real file descriptors (an embedding host): Python-level only
                pass
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with contextlib.redirect_stdout(io.StringIO()):
                    yield
    finally:
        for fd, copy in reversed(saved):
            os.dup2(copy, fd)
            os.close(copy)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else err.__class__.__name__)[:300]
