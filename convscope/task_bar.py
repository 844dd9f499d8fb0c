"""TaskBar: a progress bar for a long task outside training, such as decoding an image folder.

It stays hidden for the task's first `delay` seconds, so quick tasks print nothing. After that
it is drawn by rich on a terminal, or as one HTML output area updated in place in a notebook;
anywhere else (a log file, CI, a pipe) it draws nothing, and the task's own summary line is
what the log keeps.
"""

from __future__ import annotations

import sys
import time


class TaskBar:
    def __init__(self, what: str, total: int, delay: float = 1.0, file=None) -> None:
        self.what, self.total, self.delay = what, total, delay
        self.file = file
        self.start = time.monotonic()
        self._rich = self._html = None
        self._shown = False

    def update(self, done: int) -> None:
        if not self._shown:
            if time.monotonic() - self.start < self.delay:
                return
            self._show()
        if self._rich is not None:
            self._rich.update(self._task, completed=done)
        elif self._html is not None:
            self._html.update(self._HTML(self._render(done)))

    def _show(self) -> None:
        from convscope.display import in_notebook

        self._shown = True
        out = self.file or sys.stdout
        if self.file is None and in_notebook():
            from IPython.display import HTML, display

            self._HTML = HTML
            self._html = display(HTML(self._render(0)), display_id=True)
        elif out.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._rich = Progress(TextColumn(self.what), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), console=Console(file=out),
                                  transient=True)
            self._rich.start()
            self._task = self._rich.add_task(self.what, total=self.total)

    def _render(self, done: int) -> str:
        import html

        return (f'<div><progress value="{done}" max="{self.total}" style="width:300px">'
                f"</progress> {html.escape(self.what)}: {done:,}/{self.total:,}</div>")

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
        elif self._html is not None:
            self._html.update(self._HTML(""))
            self._html = None

    def __enter__(self) -> TaskBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
