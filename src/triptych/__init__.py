"""triptych: train, fine-tune and compare image classifiers side by side.

Importing the package is cheap: TensorFlow is imported only by the modules that
need it (models, data pipelines, training), so that reports and metrics can be
rebuilt from saved run directories without it.
"""

__version__ = "0.1.0"
