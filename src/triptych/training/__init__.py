"""Training: optimizers, schedules, callbacks and ``fit``."""

from triptych.training.trainer import RunFiles, compile_model, fit, make_optimizer, steps_for

__all__ = ["RunFiles", "compile_model", "fit", "make_optimizer", "steps_for"]
