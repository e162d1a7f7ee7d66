"""Use trained models: predict image files, explain them with Grad-CAM, export them.

>>> from triptych.inference import predict, gradcam_for_run, export
>>> predict("runs/demo/resnet18", ["cat.png", "more_images/"], top_k=3)
>>> gradcam_for_run("runs/demo/resnet18", n=4)       # overlays in runs/demo/resnet18/gradcam/
>>> export("runs/demo/resnet18", "onnx", "resnet18.onnx").parity.line()

Importing this package loads TensorFlow (everything here runs a model); the CLI imports it
only inside the commands that use it.
"""

from triptych.inference.exporting import ExportResult, Parity, export
from triptych.inference.gradcam import (
    build_gradcam_model,
    explain,
    find_target_layer,
    gradcam_for_run,
)
from triptych.inference.loading import (
    LoadedModel,
    collect_images,
    load,
    load_keras_model,
    read_image,
)
from triptych.inference.prediction import format_results, predict, predict_files

__all__ = [
    "ExportResult",
    "LoadedModel",
    "Parity",
    "build_gradcam_model",
    "collect_images",
    "explain",
    "export",
    "find_target_layer",
    "format_results",
    "gradcam_for_run",
    "load",
    "load_keras_model",
    "predict",
    "predict_files",
    "read_image",
]
