"""ProgressCallback: a live bar with the smoothed loss, and a table row per epoch.

On a terminal, rich draws the bar and prints rows above it. In a Jupyter notebook (JupyterLab,
classic Notebook, VS Code: any front end of an IPython kernel) one output area is updated in
place, a bar with the smoothed loss above the epoch table, through IPython's display ids (no
ipywidgets); nothing is printed per batch. Anywhere else (a log file, CI, a pipe) only the
table is printed, one plain line per epoch, so logs stay readable.
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
    """Reached as `learn.progress`. `refresh` is the seconds between loss reads for the bar;
    `indent` starts every line printed, so a fit run under a heading (a chapter's step) sits
    under it."""

    order = 60
    run_in_lr_find = False

    def __init__(self, refresh: float = 0.25, file=None, indent: str = "") -> None:
        self.refresh = refresh
        self.file = file
        self.indent = indent
        self._bar = None  # after_fit runs even when another callback's before_fit failed
        self._notebook: NotebookProgress | None = None

    def before_fit(self) -> None:
        from convscope.display import in_notebook

        out = self.file or sys.stdout
        self._bar = None
        self._notebook = NotebookProgress() if self.file is None and in_notebook() else None
        if self._notebook is not None:
            self.live = False
            return
        self.live = out.isatty()
        names = ["epoch", "train_loss", "valid_loss", *self.learn.recorder.metric_names, "time"]
        self._print(format_row(names))
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                 console=Console(file=out), transient=True)
            self._bar.start()

    def _print(self, line: str) -> None:
        line = self.indent + line
        if self._bar is not None:
            self._bar.console.print(line, highlight=False, markup=False)
        else:
            print(line, file=self.file or sys.stdout, flush=True)

    def _start_task(self, what: str) -> None:
        if self._notebook is not None:
            self._notebook.task(f"{what} {self.learn.epoch}", len(self.learn.dl))
            self._last = time.perf_counter()
        if self._bar is not None:
            self._task = self._bar.add_task(f"{self.indent}{what} {self.learn.epoch}", info="",
                                            total=len(self.learn.dl))
            self._bar.refresh()  # drawn once at least, however fast the host runs the task
            self._last = time.perf_counter()

    def before_train(self) -> None:
        self._start_task("train")

    def before_validate(self) -> None:
        self._start_task("valid")

    def after_batch(self) -> None:
        if self._notebook is not None:
            now = time.perf_counter()
            due = now - self._last > self.refresh
            if due:
                self._last = now
            loss = (self.learn.recorder.smooth_loss if due and self.learn.training else None)
            self._notebook.advance(loss, draw=due)
            return
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
        if self._notebook is not None:
            self._notebook.add_row(row)
            return
        self._print(format_row(list(row.values())))

    def after_fit(self) -> None:
        if self._notebook is not None:
            self._notebook.finish()
            self._notebook = None
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class NotebookProgress:
    """One output area of a notebook, updated in place: a progress bar with the smoothed loss
    while a task runs, and the epoch table below it."""

    def __init__(self) -> None:
        from IPython.display import HTML, display

        self._html = HTML
        self.rows: list[dict] = []
        self.what, self.total, self.done, self.info = "", 0, 0, ""
        self.handle = display(HTML(self.render()), display_id=True)

    def task(self, what: str, total: int) -> None:
        self.what, self.total, self.done = what, total, 0
        self.draw()

    def advance(self, loss: float | None, draw: bool) -> None:
        self.done += 1
        if loss is not None:
            self.info = f"loss {loss:.4f}"
        if draw or self.done == self.total:
            self.draw()

    def add_row(self, row: dict) -> None:
        self.rows.append(row)
        self.what = ""
        self.draw()

    def finish(self) -> None:
        self.what = ""
        self.draw()

    def draw(self) -> None:
        self.handle.update(self._html(self.render()))

    def render(self) -> str:
        import html

        from convscope.display import table_html

        bar = ""
        if self.what:
            bar = (f'<div><progress value="{self.done}" max="{self.total}" style="width:300px">'
                   f"</progress> {html.escape(self.what)}: {self.done}/{self.total} "
                   f"{html.escape(self.info)}</div>")
        table = table_html(self.rows) if self.rows else ""
        return f'<div class="convscope-progress">{bar}{table}</div>'
