"""Per-epoch training backups that a killed run resumes from, the same epoch on every worker.

Replaces ``keras.callbacks.BackupAndRestore``, which went wrong in two ways (issue 15):

- It writes the weights (with the optimizer's step count), then the epoch, as two plain files:
  a kill between them leaves epoch e+1's weights labelled epoch e, so the resumed run trains
  epoch e+1 again with its learning-rate schedule one epoch ahead (a 2-worker resume logged
  learning rate 0.0 where the uninterrupted run had 0.0025).
- Under ``multiworker`` each worker restores its own latest backup: a kill between the chief's
  and worker 1's backup of one epoch made them restore different epochs and leave lockstep
  (collective shape mismatch).

Here each backup is one weights file per epoch, written atomically, then committed by
``training_metadata.json`` (``{"epoch": completed epochs}``, also written atomically): the
commit names a complete file. On resume the workers agree on the smallest committed epoch (a
collective) and each restores exactly that one. One backup back is enough, and each worker keeps
its last two: a worker cannot finish the first step of epoch e+1 (an all-reduce with every
worker) before every worker has committed backup e, so the workers' commits differ by at most
one epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras

from triptych.errors import TriptychError
from triptych.io import atomic_path, atomic_write_json
from triptych.training.distribute import gathered_over_replicas

METADATA = "training_metadata.json"  # the commit; tests and benchmarks watch its "epoch"


class EpochBackup(keras.callbacks.Callback):
    """Back up the training state (weights and optimizer) after every epoch; restore it on
    ``fit``'s start, from the epoch every worker can restore. Place it last among the
    callbacks, so that a kill between callbacks trains (and rewrites) an epoch again rather
    than skipping it. The files stay when training ends (the runner deletes them once done)."""

    def __init__(self, backup_dir: str | Path):
        super().__init__()
        self.backup_dir = Path(backup_dir)

    def weights_path(self, epochs_done: int) -> Path:
        return self.backup_dir / f"epoch-{epochs_done}.weights.h5"

    def committed_epochs(self) -> int:
        """How many epochs the last committed backup holds (0: none)."""
        path = self.backup_dir / METADATA
        return int(json.loads(path.read_text())["epoch"]) if path.exists() else 0

    def on_train_begin(self, logs=None):
        epochs = agreed_epochs(self.model.distribute_strategy, self.committed_epochs())
        if not epochs:
            return
        path = self.weights_path(epochs)
        if not path.exists():
            raise TriptychError(f"cannot resume: the backup of epoch {epochs} is missing ({path})")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(str(path))
        self.model._initial_epoch = epochs  # what BackupAndRestore sets: fit starts from that epoch

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        with atomic_path(self.weights_path(done), suffix=".weights.h5") as tmp:
            self.model.save_weights(str(tmp))
        atomic_write_json(self.backup_dir / METADATA, {"epoch": done, "batch": 0})
        for old in self.backup_dir.glob("epoch-*.weights.h5"):
            if _epochs_of(old) not in (done, done - 1):  # the previous one may be the agreed one
                old.unlink(missing_ok=True)


def _epochs_of(path: Path) -> int:
    return int(path.name.removeprefix("epoch-").removesuffix(".weights.h5"))


def agreed_epochs(strategy, epochs: int) -> int:
    """The smallest ``epochs`` over every worker of ``strategy`` (every worker must call it);
    ``epochs`` itself for one replica."""
    return int(min(row[0] for row in gathered_over_replicas(strategy, [epochs])))
