"""docs/tour.ipynb from docs/tour.md: one source, two forms.

tour.md is the source: Markdown whose ```python blocks hold doctest lines, which the test suite
runs. This script turns it into a notebook: each text stretch a Markdown cell, each python block
code cells made of its `>>>` and `...` lines, a new cell after each statement whose output the
page shows (the expected output is left out: executing the notebook shows the real one).
tests/test_notebooks.py fails when tour.ipynb is not what this script makes of tour.md, and
executes the notebook in a real Jupyter kernel.

    python docs/tour_notebook.py          # rewrite docs/tour.ipynb
    python docs/tour_notebook.py --check  # exit 1 if docs/tour.ipynb is out of date
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).parent
SOURCE, TARGET = HERE / "tour.md", HERE / "tour.ipynb"
FENCE = re.compile(r"^```python\n(.*?)^```\n?", re.S | re.M)
DIRECTIVE = re.compile(r"\s*# doctest:.*$")


def code_cells(block: str) -> list[str]:
    """The statements of a doctest block, without prompts and expected output, as cells: a
    statement whose value the page shows ends a cell, so the notebook shows it too (a cell
    displays only its last value)."""
    cells, current, showing = [], [], False
    for line in block.splitlines():
        if line.startswith((">>>", "...")):
            if showing:  # the previous statement's output has ended: a new cell
                cells.append(current)
                current, showing = [], False
            current.append(DIRECTIVE.sub("", line[4:] if len(line) > 3 else ""))
        elif line.strip() and current:
            showing = True
    cells.append(current)
    return [text for text in ("\n".join(c).strip("\n") for c in cells) if text]


def cell(kind: str, text: str, index: int) -> dict:
    out = {"cell_type": kind, "id": f"tour-{index:02d}", "metadata": {},
           "source": text.splitlines(keepends=True)}
    if kind == "code":
        out.update(execution_count=None, outputs=[])
    return out


def notebook(markdown: str) -> dict:
    """The notebook (nbformat 4.5, as a dict) of a tour written as doctest Markdown."""
    cells, pos = [], 0
    for m in FENCE.finditer(markdown):
        text = markdown[pos:m.start()].strip("\n")
        if text:
            cells.append(("markdown", text))
        cells += [("code", code) for code in code_cells(m.group(1))]
        pos = m.end()
    rest = markdown[pos:].strip("\n")
    if rest:
        cells.append(("markdown", rest))
    return {
        "cells": [cell(kind, text, i) for i, (kind, text) in enumerate(cells)],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                    "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def render(markdown: str) -> str:
    return json.dumps(notebook(markdown), indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    wanted = render(SOURCE.read_text())
    if "--check" in argv:
        if not TARGET.is_file() or TARGET.read_text() != wanted:
            print(f"{TARGET} is out of date: run `python {Path(__file__).name}` in docs/",
                  file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(wanted)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
