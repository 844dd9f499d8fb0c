"""Ctrl-C outside the training loop: held back through start-up, and through the few seconds in
which a finished run writes its outputs. (Inside the loop, the GracefulStop callback stops
between two batches.) Imports nothing heavy, so it can guard the imports of torch.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable


@contextlib.contextmanager
def finish_before_stopping(note: Callable[[], None]):
    """Within the block, a first Ctrl-C only calls `note` (say that the work under way is
    being finished) and the block runs to its end; a second one interrupts at once. Used for
    the few seconds in which a finished run writes its outputs: the report is written whenever
    training finished. Outside the main thread (where signals never arrive) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def ask(signum, frame) -> None:
        signal.signal(signal.SIGINT, previous)  # the next Ctrl-C interrupts at once
        note()

    signal.signal(signal.SIGINT, ask)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) == ask:
            signal.signal(signal.SIGINT, previous)


class Deferred:
    """Whether a Ctrl-C came while `deferred_interrupt` held it back."""

    asked = False


@contextlib.contextmanager
def deferred_interrupt():
    """Within the block, Ctrl-C only records that it was pressed (`.asked`); the block runs
    to its end. For start-up: a KeyboardInterrupt raised in the middle of importing torch or
    matplotlib can leave a half-initialised C extension behind, and the run fails later with
    an unrelated error, or the interrupt is lost. The caller checks `.asked` after the block
    and stops cleanly. Outside the main thread it does nothing."""
    state = Deferred()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def ask(signum, frame) -> None:
        state.asked = True

    previous = signal.signal(signal.SIGINT, ask)
    try:
        yield state
    finally:
        if signal.getsignal(signal.SIGINT) == ask:
            signal.signal(signal.SIGINT, previous)
