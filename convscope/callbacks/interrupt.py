"""GracefulStop: Ctrl-C stops training between two batches, with a checkpoint to resume from.

Without it a KeyboardInterrupt lands wherever the code happens to be, possibly halfway through
an optimizer step, and the work since the last checkpoint is lost. With it the first Ctrl-C
(SIGINT) only asks: the current batch finishes, the CheckpointCallback (if the learner has one)
saves that position, and the fit ends as if a callback had cancelled it. A second Ctrl-C
interrupts at once, as usual. For one process only: under torch.distributed the processes would
stop at different batches.
"""

from __future__ import annotations

import signal
import threading

from convscope.callback import Callback, CancelFitException


class GracefulStop(Callback):
    """Reached as `learn.graceful_stop`; after a stopped fit `stopped_at` is (epoch, batch):
    where a resume continues (batch 0: the start of that epoch)."""

    order = 95  # after CheckpointCallback (90), whose epoch-end save comes first
    run_in_lr_find = False

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: tuple[int, int] | None = None
        self._previous = None

    def before_fit(self) -> None:
        self.requested, self.stopped_at = False, None
        if threading.current_thread() is threading.main_thread():  # signals reach only it
            self._previous = signal.signal(signal.SIGINT, self._ask)

    def _ask(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)  # the next Ctrl-C interrupts at once

    def after_batch(self) -> None:
        learn = self.learn
        if self.requested and learn.training:
            checkpoint = getattr(learn, "checkpoint", None)
            if checkpoint is not None:
                checkpoint.save_after_batch()
            self.stopped_at = (learn.epoch, learn.iter + 1)
            raise CancelFitException

    def after_epoch(self) -> None:
        # asked during validation: the epoch-end checkpoint is already written
        if self.requested and self.learn.epoch + 1 < self.learn.n_epoch:
            self.stopped_at = (self.learn.epoch + 1, 0)
            raise CancelFitException

    def after_fit(self) -> None:
        if self._previous is not None and signal.getsignal(signal.SIGINT) == self._ask:
            signal.signal(signal.SIGINT, self._previous)
        self._previous = None
