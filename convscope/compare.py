"""Runs side by side: the settings that differ, the final metrics, overlaid curves, each
layer's color_dim on one colour scale, and each run's diagnosis, on one self-contained page.

Chapter 13 teaches by comparison (the same CNN trained five ways, a bad color_dim beside a
good one); this draws any runs' saved files that way, without retraining. Runs of different
models or data are allowed: layers are paired by name, and those only some runs have are
listed.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from convscope.config import describe
from convscope.display import findings_html, table_html
from convscope.errors import UsageError
from convscope.files import atomic_write_bytes
from convscope.report import CSS, Figures
from convscope.run_folder import Run, load_run


def load_runs(run_dirs) -> list[Run]:
    """The run folders, loaded; at least two, each a run folder convscope can read."""
    run_dirs = [Path(d) for d in run_dirs]
    if len(run_dirs) < 2:
        raise UsageError(f"compare needs at least two run folders, received {len(run_dirs)}")
    runs = []
    for d in run_dirs:
        try:
            runs.append(load_run(d))
        except UsageError as e:
            raise UsageError(f"{d} cannot be compared: {e}") from None
    return runs


def names_of(runs: list[Run]) -> list[str]:
    """Each run's folder name, made unique with its parent where two share one."""
    names = [r.path.name for r in runs]
    return [f"{r.path.parent.name}/{n}" if names.count(n) > 1 else n
            for r, n in zip(runs, names, strict=True)]


def differing_settings(runs: list[Run], names: list[str]) -> list[dict]:
    """One row per setting whose value is not the same in every run (the run folder aside)."""
    keys = [k for k in dict.fromkeys(k for r in runs for k in r.config) if k != "out"]
    rows = []
    for k in keys:
        values = [r.config.get(k, "(not set)") for r in runs]
        if any(v != values[0] for v in values):
            label = describe(k, values[0])[0]
            rows.append({"setting": label, **{n: describe(k, v)[1] if v != "(not set)" else v
                                               for n, v in zip(names, values, strict=True)}})
    return rows


PLAIN = "plain accuracy"


def final_metrics(runs: list[Run], names: list[str]) -> list[dict]:
    """Each run's result (convscope.result: the accuracy its report shows) and last epoch,
    with the plain accuracy beside the result where a run used test-time augmentation; the
    best value of each column marked with a star."""
    cols = {"accuracy": max, "train_loss": min, "valid_loss": min}
    if any(r.result.augmented for r in runs):
        cols[PLAIN] = max
    rows = []
    for r, n in zip(runs, names, strict=True):
        last = r.values[-1] if r.values else {}
        result = r.result
        row = {"run": n, "epochs": len(r.values), "accuracy": result.accuracy,
               "train_loss": last.get("train_loss", math.nan),
               "valid_loss": last.get("valid_loss", math.nan),
               "measured": ("with test-time augmentation" if result.augmented else "plain")}
        if PLAIN in cols:
            row[PLAIN] = result.plain
        rows.append(row)
    for c, best in cols.items():
        finite = [row[c] for row in rows if math.isfinite(row[c])]
        top = best(finite) if finite else None
        for row in rows:
            v = row[c]
            text = ((f"{v:.2%}" if "accuracy" in c else f"{v:.4g}")
                    if math.isfinite(v) else "-")
            row[c] = f"{text} *" if top is not None and v == top and len(rows) > 1 else text
    return rows


def compare(run_dirs) -> str:
    """The comparison page of `run_dirs` (two or more run folders), as HTML text."""
    from convscope import plots
    from convscope.diagnosis import diagnose

    runs = load_runs(run_dirs)
    names = names_of(runs)
    figs = Figures()
    title = "convscope: " + " vs ".join(names)
    out = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
           f"<title>{html.escape(title)}</title><style>{CSS}"
           f".side {{ display: grid; grid-template-columns: repeat({len(runs)}, 1fr); "
           f"gap: 1em; }}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    diff = differing_settings(runs, names)
    out += ["<h2>Settings that differ</h2>",
            table_html(diff, left=("setting", *names)) if diff
            else "<p>None: the runs were trained with the same settings.</p>",
            "<h2>Final metrics</h2><p>Each run's result, as its report shows it (with "
            "test-time augmentation where the run used it, its plain accuracy beside), and its "
            "last epoch's losses; * marks the best.</p>",
            table_html(final_metrics(runs, names), left=("run",))]
    histories = [r.history for r in runs]
    if any(h.losses for h in histories):
        changed = ("<p>A thin vertical line in a run's colour: where its training set changed "
                   "(its later epochs draw fewer images, so its schedule moves faster per "
                   "epoch there).</p>" if any(getattr(h, "marks", None) for h in histories)
                   else "")
        out += ["<h2>Curves</h2>", changed,
                figs.img(lambda: plots.compare_curves(histories, names), "overlaid curves")]
    stats = [r.stats for r in runs]
    layers = list(dict.fromkeys(n for s in stats if s is not None for n in s.layer_names))
    if layers:
        out += ["<h2>Activations</h2><p>Each run's share of activations near zero per block "
                "over training (a block near 100% is dead); then, block by block, the "
                "color_dim of every run that recorded it, on one colour scale and one "
                "histogram range: darker means fewer activations in every panel.</p>",
                figs.img(lambda: plots.compare_dead(stats, names), "near-zero share per run")]
        for layer in layers:
            have = [n for s, n in zip(stats, names, strict=True)
                    if s is not None and layer in s.layer_names]
            missing = [n for n in names if n not in have]
            note = (f" <small>(only in {', '.join(have)}; not in {', '.join(missing)})</small>"
                    if missing else "")
            out += [f"<h3>Block {html.escape(layer)}{note}</h3>",
                    figs.img(lambda layer=layer: plots.compare_color_dim(stats, names, layer),
                             f"block {layer} color_dim side by side")]
    out += ["<h2>Diagnosis</h2><div class='side'>"]
    for r, n in zip(runs, names, strict=True):
        found = diagnose(stats=r.stats, history=r.history, gradients=r.gradients)
        out += [f"<div><h3>{html.escape(n)}</h3>{findings_html(found)}</div>"]
    out += ["</div></body></html>"]
    return figs.fill("\n".join(out))


def write_compare(run_dirs, out: str | Path) -> Path:
    """Write the comparison page to `out` (atomically); return its path."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out: the comparison is an HTML page; expected a .html file, "
                         f"received {str(out)!r}")
    page = compare(run_dirs)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, page.encode())
    return out
