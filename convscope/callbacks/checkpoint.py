"""CheckpointCallback: a checkpoint at the end of every epoch and, on request, every N batches.

Each save replaces the previous file atomically, so a kill at any moment leaves a complete
checkpoint. Resume with `learn.fit(..., resume=path)` (or `convscope train --resume RUN_DIR`):
training continues at the next batch with the same weights, optimizer state, schedule
position, data order and random states, so the result equals an uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path

from convscope.callback import Callback
from convscope.checkpoint import Position, save_checkpoint
from convscope.errors import UsageError


class CheckpointCallback(Callback):
    """Reached as `learn.checkpoint`.

    Args:
        path: the checkpoint file (safetensors).
        every_batches: also save after every N training batches (None: only at epoch ends).
    """

    order = 90  # after the Recorder and the schedule have done their part of the batch
    run_in_lr_find = False

    def __init__(self, path: str | Path, every_batches: int | None = None) -> None:
        if every_batches is not None and every_batches < 1:
            raise UsageError(f"every_batches must be >= 1 or None. Received: {every_batches}.")
        self.path, self.every_batches = Path(path), every_batches
        self.saves = 0

    def after_batch(self) -> None:
        learn = self.learn
        if not learn.training or self.every_batches is None:
            return
        if (learn.iter + 1) % self.every_batches == 0:
            self.save_after_batch()

    def save_after_batch(self) -> Position:
        """Save now, at the end of the current training batch: a resume starts at the next."""
        learn = self.learn
        pos = Position(learn.epoch, learn.iter + 1, learn.train_iter + 1, learn.n_epoch)
        # resuming redraws this epoch's shuffle from the generator state before it
        save_checkpoint(learn, self.path, pos, learn.dls.train.epoch_state)
        self.saves += 1
        return pos

    def after_epoch(self) -> None:
        learn = self.learn
        pos = Position(learn.epoch + 1, 0, learn.train_iter, learn.n_epoch)
        save_checkpoint(learn, self.path, pos, learn.dls.train.generator.get_state())
        self.saves += 1
