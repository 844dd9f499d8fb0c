"""ProgressCallback: a live bar with the smoothed loss, and a table row per epoch.

On a terminal, rich draws the bar and prints rows above it. Anywhere else (a log file, CI, a
pipe) only the table is printed, one plain line per epoch, so logs stay readable.
"""

from __future__ import annotations

import sys
import time

from convscope.callback import Callback


def format_row(values: list[object]) -> str:
    """Cells 11 wide, one space apart; floats with 6 decimals, or 4 significant digits in
    exponent form when that would not fit."""
    cells = []
    for v in values:
        if isinstance(v, float):
            v = f"{v:.6f}" if abs(v) < 1e3 or v != v else f"{v:.4e}"
        cells.append(f"{v!s:<11}")
    return " ".join(cells).rstrip()


class ProgressCallback(Callback):
    """Reached as `learn.progress`. `refresh` is the seconds between loss reads for the bar."""

    order = 60
    run_in_lr_find = False

    def __init__(self, refresh: float = 0.25, file=None) -> None:
        self.refresh = refresh
        self.file = file
        self._bar = None  # after_fit runs even when another callback's before_fit failed

    def before_fit(self) -> None:
        out = self.file or sys.stdout
        self.live = out.isatty()
        names = ["epoch", "train_loss", "valid_loss", *self.learn.recorder.metric_names, "time"]
        self._print(format_row(names))
        self._bar = None
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                 console=Console(file=out), transient=True)
            self._bar.start()

    def _print(self, line: str) -> None:
        if self._bar is not None:
            self._bar.console.print(line, highlight=False, markup=False)
        else:
            print(line, file=self.file or sys.stdout, flush=True)

    def _start_task(self, what: str) -> None:
        if self._bar is not None:
            self._task = self._bar.add_task(f"{what} {self.learn.epoch}", info="",
                                            total=len(self.learn.dl))
            self._bar.refresh()  # drawn once at least, however fast the host runs the task
            self._last = time.perf_counter()

    def before_train(self) -> None:
        self._start_task("train")

    def before_validate(self) -> None:
        self._start_task("valid")

    def after_batch(self) -> None:
        if self._bar is None:
            return
        info = None
        now = time.perf_counter()
        if self.learn.training and now - self._last > self.refresh:
            info, self._last = f"loss {self.learn.recorder.smooth_loss:.4f}", now
        fields = {"info": info} if info else {}
        self._bar.update(self._task, advance=1, **fields)

    def after_train(self) -> None:
        if self._bar is not None:
            self._bar.remove_task(self._task)

    def after_validate(self) -> None:
        self.after_train()

    def after_epoch(self) -> None:
        row = dict(self.learn.recorder.values[-1])
        row["time"] = f"{row['time']:.1f}s"
        self._print(format_row(list(row.values())))

    def after_fit(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
