"""How convscope's objects show themselves: the HTML pieces a notebook and the report share.

In a Jupyter notebook (JupyterLab, classic Notebook, VS Code) an object returned as a cell's
value is shown through its `_repr_html_` (or `_repr_png_` for a figure); everywhere else its
`__repr__` is a readable line or table. The functions here turn data into that HTML: tables with
sensible precision and findings coloured by severity, with inline styles so they look the same
in report.html and in any notebook front end. Nothing here judges or draws: diagnosis.py
judges, plots.py draws.
"""

from __future__ import annotations

import html
import sys
from collections.abc import Iterable, Sequence

SEVERITY_COLOURS = {"error": "#c62828", "warning": "#ef8f00", "info": "#2e7d32"}


def fmt(value: object, digits: int = 4) -> str:
    """A cell value as a reader wants it: floats to `digits` significant digits, the rest as
    str.

    >>> fmt(0.123456789), fmt(2.0), fmt(12345.678), fmt(3), fmt(float("nan"))
    ('0.1235', '2', '1.235e+04', '3', 'nan')
    """
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def table_html(rows: Sequence[dict], left: Iterable[str] = (), digits: int = 4) -> str:
    """An HTML table of dicts sharing keys; columns named in `left` align left."""
    if not rows:
        return "<p>(none)</p>"
    left = set(left)
    cols = list(rows[0])

    def cell(tag: str, col: str, text: str) -> str:
        align = "left" if col in left else "right"
        return f'<{tag} style="text-align:{align}">{html.escape(text)}</{tag}>'

    head = "".join(cell("th", c, c) for c in cols)
    body = "".join("<tr>" + "".join(cell("td", c, fmt(r.get(c, ""), digits)) for c in cols)
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def table_text(rows: Sequence[dict], digits: int = 4) -> str:
    """The same table as plain text, for `__repr__`."""
    if not rows:
        return "(none)"
    cols = list(rows[0])
    cells = [[fmt(r.get(c, ""), digits) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def findings_html(findings: Iterable) -> str:
    """Each finding as a box coloured by its severity (as in report.html)."""
    parts = []
    for f in findings:
        where = []
        if f.layer is not None:  # step findings are of layers, activation findings of blocks
            steps = f.kind in ("barely_learning", "large_updates", "exploding_gradients")
            where.append(f"{'layer' if steps else 'block'} {f.layer}")
        if f.batches is not None:
            a, b = f.batches
            where.append(f"batch {a}" if a == b else f"batches {a}-{b}")
        extra = f" <small>({html.escape(', '.join(where))})</small>" if where else ""
        colour = SEVERITY_COLOURS.get(f.severity, "#555")
        parts.append(
            f'<div class="finding {f.severity}" style="border-left:6px solid {colour};'
            f'padding:0.4em 0.8em;margin:0.4em 0">'
            f'<b style="color:{colour};text-transform:uppercase;font-size:0.8em;'
            f'margin-right:0.5em">{html.escape(f.severity)}</b>'
            f"{html.escape(f.message)} {html.escape(f.suggestion)}{extra}</div>")
    return "\n".join(parts)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, Notebook, VS Code), where HTML displays show.
    Never imports IPython: outside a kernel it is not loaded."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and hasattr(shell, "kernel")
