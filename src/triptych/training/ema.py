"""An exponential moving average of the weights (``use_ema`` on the Keras optimizer), used
where it counts: validation, the best checkpoint, and the weights a phase ends with.

Keras keeps the average inside the optimizer and copies it into the model at the end of
``fit``. ``keras.callbacks.SwapEMAWeights(swap_on_epoch=True)`` puts it into the model for
validation and for the callbacks after it at the end of each epoch (the best checkpoint); a
second callback puts the raw weights back before the epoch's backup, so that a resumed run
continues training the raw weights with their average beside them, as an uninterrupted one.
Only trainable variables are averaged (Keras's choice): BatchNorm statistics stay the raw model's.
"""

from __future__ import annotations

import keras


class RawWeightsBack(keras.callbacks.Callback):
    """At the end of an epoch, undoes ``swap``'s exchange of the raw and the averaged weights."""

    def __init__(self, swap: keras.callbacks.SwapEMAWeights):
        super().__init__()
        self.swap = swap

    def on_epoch_end(self, epoch, logs=None):
        # What SwapEMAWeights itself does when the next epoch begins (a no-op unless swapped).
        self.swap.on_epoch_begin(epoch + 1, logs)


def ema_callbacks(enabled: bool) -> tuple[list[keras.callbacks.Callback], list[keras.callbacks.Callback]]:
    """``(before_checkpoint, before_backup)``: callbacks to place before the best-checkpoint
    callback and just before the epoch backup; empty lists when the average is off."""
    if not enabled:
        return [], []
    swap = keras.callbacks.SwapEMAWeights(swap_on_epoch=True)
    return [swap], [RawWeightsBack(swap)]
