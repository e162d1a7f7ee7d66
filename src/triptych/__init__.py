"""triptych: train, fine-tune and compare image classifiers side by side.

Importing the package is cheap: TensorFlow is imported only by the modules that need it (models,
data pipelines, training, inference, the runner), so that reports, metrics, audits and config
tools work from saved files without it. That is the one reason for an import inside a function
anywhere in triptych: it keeps TensorFlow (or another heavy, optional package such as MLflow or
ONNX Runtime) out of a light command's path. Everything else is imported at the top of its module.
"""

__version__ = "0.1.0"
