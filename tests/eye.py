"""What the eye checks, for the figure and page tests: on every figure, no empty panel, every
data point inside its axes' limits and every named line explained by a legend; on a page
opened in Chromium, every image and canvas shown whole, not blank, and nothing wider than the
window."""

from __future__ import annotations

import json
import math
from pathlib import Path

from browser import check_page


def eye_check(fig, what: str) -> None:
    for ax in fig.axes:
        if not ax.axison:  # an image grid's cell
            continue
        # a line through a single point draws nothing: it needs a marker to be seen
        seen = [line for line in ax.lines if len(line.get_xdata()) > 1
                or (len(line.get_xdata()) == 1 and line.get_marker() not in (None, "None", ""))]
        assert seen + ax.images + ax.collections, f"{what}: an empty panel ({ax.get_title()!r})"
        # a line drawn with a name is explained by a legend on its panel or the figure's
        legends = [ax.get_legend()] + fig.legends
        explained = {t.get_text() for leg in legends if leg is not None
                     for t in leg.get_texts()}
        named = {line.get_label() for line in ax.lines
                 if not line.get_label().startswith("_")}
        assert named <= explained, (f"{what}: {sorted(named - explained)} in "
                                    f"{ax.get_title()!r} explained by no legend")
        (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
        for line in ax.lines:
            if line.get_transform() != ax.transData:  # an axvline: x in data, y in the axes
                xs = [x for x in line.get_xdata() if math.isfinite(x)]
                assert all(x0 <= x <= x1 for x in xs), (
                    f"{what}: a vertical line at {xs} outside {ax.get_title()!r}'s x "
                    f"{x0:.3g}..{x1:.3g}")
                continue
            for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True):
                if math.isfinite(x) and math.isfinite(y):
                    assert x0 <= x <= x1 and y0 <= y <= y1, (
                        f"{what}: ({x}, {y}) outside {ax.get_title()!r}'s "
                        f"x {x0:.3g}..{x1:.3g}, y {y0:.3g}..{y1:.3g}")


def figure_texts(fig) -> str:
    """Every title, axis label and legend entry of a figure, one string."""
    texts = [fig._suptitle.get_text() if fig._suptitle is not None else ""]
    legends = list(fig.legends)
    for ax in fig.axes:
        texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        legends += [ax.get_legend()] if ax.get_legend() is not None else []
    texts += [t.get_text() for leg in legends for t in leg.get_texts()]
    return "\n".join(texts)


def check_drawn_figures(monkeypatch) -> list[str]:
    """From now on, every figure drawn to a PNG is eye-checked first, in this process (the
    copies forked_map forks would check it where a failure is not seen); returns the list
    each drawn figure's texts are appended to."""
    from convscope import forked, plots

    drawn: list[str] = []
    real = plots.png_bytes

    def checked(fig, dpi: int = 100) -> bytes:
        eye_check(fig, f"figure {len(drawn)} ({fig!r})")
        drawn.append(figure_texts(fig))
        return real(fig, dpi)

    monkeypatch.setattr(forked, "cores", lambda: 1)
    monkeypatch.setattr(plots, "png_bytes", checked)
    return drawn


# Run in the page: each image and canvas with the heading it sits under, whether every pixel
# is one colour, and where it is drawn; how far the page is wider than the window; its text.
FACTS = """(() => {
  const heading = el => {
    for (let n = el; n; n = n.parentElement)
      for (let p = n.previousElementSibling; p; p = p.previousElementSibling) {
        if (/^H[1-4]$/.test(p.tagName)) return p.textContent;
        const inner = p.querySelectorAll('h1, h2, h3, h4');
        if (inner.length) return inner[inner.length - 1].textContent;
      }
    return null;
  };
  const pixels = el => {
    if (el.tagName === 'CANVAS') return el.getContext('2d').getImageData(0, 0, el.width,
                                                                         el.height).data;
    const c = document.createElement('canvas');
    c.width = el.naturalWidth; c.height = el.naturalHeight;
    const g = c.getContext('2d');
    g.drawImage(el, 0, 0);
    return g.getImageData(0, 0, c.width, c.height).data;
  };
  const blank = el => {
    const d = pixels(el);
    for (let i = 4; i < d.length; i += 4)
      if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2]) return false;
    return true;
  };
  const width = document.documentElement.clientWidth;
  const shown = [...document.querySelectorAll('img, canvas')].map(el => {
    const r = el.getBoundingClientRect();
    return {tag: el.tagName.toLowerCase(), alt: el.alt || el.getAttribute('aria-label') || '',
            heading: heading(el), blank: blank(el), left: r.left, right: r.right,
            width: r.width, height: r.height};
  });
  return JSON.stringify({shown, width, overflow: document.documentElement.scrollWidth - width,
                         headings: [...document.querySelectorAll('h1, h2, h3, h4')]
                                   .map(h => h.textContent),
                         text: document.body.innerText});
})()"""


def look(page: Path, screenshot: Path) -> dict:
    """Open `page` in Chromium and check what every page must pass; return its facts:
    `shown` (each image and canvas: alt, heading, place), `headings`, `text`."""
    def facts(call):
        got = call("Runtime.evaluate", expression=FACTS, returnByValue=True)["result"]
        return json.loads(got["value"])

    result = check_page(page, screenshot, interact=facts)
    assert result.console_errors == [] and result.exceptions == []
    assert result.broken_images == []
    seen = result.result
    for el in seen["shown"]:
        what = f"{page.name}: {el['tag']} {el['alt']!r} under {el['heading']!r}"
        assert el["width"] > 0 and el["height"] > 0, f"{what} is not shown"
        assert el["left"] >= 0 and el["right"] <= seen["width"] + 0.5, f"{what} is cut off"
        if el["tag"] == "img":  # a canvas may be one colour by right: a dead channel
            assert not el["blank"], f"{what} is blank"
    assert seen["overflow"] <= 0, f"{page.name} is {seen['overflow']} px wider than the window"
    return seen
