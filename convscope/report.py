"""The HTML report: one self-contained page per run folder, the diagnosis at the top.

Built only from what the run folder holds (config.json, metrics.csv, history.json,
activation_stats.safetensors, model.safetensors, show_batch.png), so `convscope report
RUN_DIR` can rebuild it at any time. Images are inlined as data URIs and the page has no
script: it opens anywhere, offline, and can be mailed as one file.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from convscope.callbacks.activation_stats import ActivationStats
from convscope.callbacks.recorder import History
from convscope.config import describe, with_absent
from convscope.diagnosis import diagnose
from convscope.display import findings_html, table_html
from convscope.errors import UsageError
from convscope.files import atomic_write_bytes

REQUIRED = ("config.json", "metrics.csv", "history.json")

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f5f5f5; } td.l, th.l { text-align: left; }
.finding { border-left: 6px solid; padding: 0.5em 0.9em; margin: 0.5em 0; background: #fafafa; }
.error { border-color: #c62828; } .warning { border-color: #ef8f00; }
.info { border-color: #2e7d32; }
.sev { font-weight: 600; text-transform: uppercase; font-size: 0.8em; margin-right: 0.5em; }
img { max-width: 100%; display: block; margin: 0.4em 0; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 13px; }
.layer { display: grid; grid-template-columns: 1fr; gap: 0.2em; }
"""


@dataclass
class Run:
    """What a run folder holds, loaded."""

    path: Path
    config: dict
    values: list[dict]
    history: History
    stats: ActivationStats | None
    model_meta: dict
    gradients: object | None = None  # GradientStats
    interpretation: object | None = None  # Interpretation
    summary: object | None = None  # the model summary, when it can be rebuilt


def load_run(run_dir: str | Path) -> Run:
    """Read a run folder written by `convscope train`.

    Raises:
        ValueError: the folder or one of its required files is missing or unreadable.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise UsageError(f"Run folder not found. Received: {str(path)!r}. Expected a folder "
                         f"written by `convscope train`.")
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        raise UsageError(f"{path} is not a complete run folder: it lacks {', '.join(missing)}.")
    try:
        config = with_absent(json.loads((path / "config.json").read_text()))
        with (path / "metrics.csv").open(newline="") as f:
            values = [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
                      for row in csv.DictReader(f)]
    except (ValueError, OSError) as e:
        raise UsageError(f"{path}: cannot read config.json or metrics.csv: {e}") from None
    history = History.load(path / "history.json")
    stats_file = path / "activation_stats.safetensors"
    stats = ActivationStats.load(stats_file) if stats_file.is_file() else None
    model_meta = {}
    if (path / "model.safetensors").is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path / "model.safetensors"), "pt") as f:
                model_meta = f.metadata() or {}
        except Exception as e:  # safetensors' own error type for a damaged header
            raise UsageError(f"{path / 'model.safetensors'}: cannot be read: {e}") from None
    gradients = interpretation = None
    if (path / "gradient_stats.safetensors").is_file():
        from convscope.callbacks.gradient_stats import GradientStats

        gradients = GradientStats.load(path / "gradient_stats.safetensors")
    if (path / "interpretation.safetensors").is_file():
        from convscope.interpretation import Interpretation

        interpretation = Interpretation.load(path / "interpretation.safetensors")
    return Run(path, config, values, history, stats, model_meta, gradients, interpretation)


def _png(fig) -> str:
    from convscope.plots import png_bytes

    return "data:image/png;base64," + base64.b64encode(png_bytes(fig, dpi=90)).decode()


class Figures:
    """A page's figures, drawn together when the page is done: `img` puts a placeholder where
    the figure goes, `fill` draws them all (spread over the cores: forked.py) and puts each in
    its place. `make` builds a fresh figure and must not depend on what runs after it."""

    def __init__(self) -> None:
        self.makers: list[Callable[[], object]] = []

    def img(self, make: Callable[[], object], alt: str) -> str:
        self.makers.append(make)
        return _img(f"\x00figure {len(self.makers) - 1}\x00", alt)

    def fill(self, page: str) -> str:
        from convscope.forked import forked_map

        for k, src in enumerate(forked_map(lambda make: _png(make()), self.makers)):
            page = page.replace(f"\x00figure {k}\x00", src, 1)
        return page


def _file_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _img(src: str, alt: str) -> str:
    return f'<img src="{src}" alt="{html.escape(alt)}">'


def _summary(run: Run):
    """The model summary, rebuilt from the weights' metadata (simple_cnn only)."""
    meta = run.model_meta
    if meta.get("model") != "simple_cnn" or "input_shape" not in meta:
        return None
    from convscope.model_summary import summary
    from convscope.models import simple_cnn

    shape = tuple(json.loads(meta["input_shape"]))
    model = simple_cnn(in_channels=int(meta["in_channels"]), n_classes=int(meta["n_classes"]),
                       bn=json.loads(meta.get("bn", "true")))
    return summary(model, shape)


def _settings(run: Run) -> list[dict]:
    """The config in words, then what the run was: model, optimizer, schedule, images."""
    rows = [dict(zip(("setting", "value"), describe(k, v), strict=True))
            for k, v in run.config.items()]
    meta, hist = run.model_meta, run.history.meta
    if meta.get("model"):
        block = ("conv -> batchnorm -> ReLU" if json.loads(meta.get("bn", "true"))
                 else "conv -> ReLU (no batchnorm)")
        rows.append({"setting": "model", "value": f"{meta['model']}: conv blocks of {block}, "
                     f"widths 8-16-32-64-{meta.get('n_classes', '?')}, "
                     f"stride 2, a 5x5 first kernel; input {meta.get('input_shape', '?')}"})
    rows.append({"setting": "optimizer", "value": "AdamW (betas 0.9/0.99, eps 1e-5, weight "
                 "decay 0.01)"})
    lr = run.config.get("lr")
    if lr is not None and run.config.get("schedule") == "constant":
        rows.append({"setting": "schedule", "value": f"constant lr {lr:g} (fit)"})
    elif lr is not None:
        rows.append({"setting": "schedule", "value": f"1cycle: lr {lr / 25:.3g} up to {lr:g} "
                     f"over the first 25% of the steps (cosine), then down to {lr / 1e5:.2g}; "
                     f"momentum 0.95 -> 0.85 -> 0.95"})
    if hist.get("n_train") is not None:
        held = hist.get("held_out", "valid")
        hard = hist.get("hard_examples")
        later = (f" (epochs after the first: the hardest {hard['images']:,})"
                 if hard and len(run.values) > 1 else "")
        rows.append({"setting": "images", "value": f"{hist['n_train']:,} train{later}, "
                     f"{hist['n_valid']:,} {held}"})
    if meta.get("classes"):
        classes = json.loads(meta["classes"])
        rows.append({"setting": "classes", "value": f"{len(classes)}: "
                     + ", ".join(classes[:20]) + (", ..." if len(classes) > 20 else "")})
    return rows


def _epochs(values: list[dict]) -> list[dict]:
    """The epoch table as read: accuracy in percent, time labelled in seconds."""
    rows = []
    for v in values:
        row = {k: v[k] for k in v if k not in ("accuracy", "time")}
        if "accuracy" in v:
            row["accuracy"] = f"{v['accuracy']:.2%}"
        if "time" in v:
            row["time (s)"] = f"{v['time']:.1f}"
        rows.append(row)
    return rows


def _blocks(run: Run) -> dict[str, str]:
    """Each recorded block's name -> the summary's layers it holds ("0" -> "0.0-0.2")."""
    rows = run.summary.rows if run.summary is not None else []
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r["layer"].split(".")[0], []).append(r["layer"])
    return {k: (v[0] if len(v) == 1 else f"{v[0]}-{v[-1]}") for k, v in out.items()}


def render(run: Run) -> str:
    """The report page for a loaded run, as HTML text."""
    from convscope import plots

    findings = diagnose(stats=run.stats, history=run.history, gradients=run.gradients)
    title = f"convscope run: {run.path.name}"
    last = run.values[-1] if run.values else {}
    n = len(run.values)
    held = run.history.meta.get("held_out", "valid")
    tta = run.history.meta.get("tta")
    headline = (f"{held} accuracy {last['accuracy']:.2%} after {n} epoch{'s' if n != 1 else ''}"
                if "accuracy" in last else "no epoch finished")
    if tta and "accuracy" in last:
        which = ("each image" if "looked_at" not in tta else
                 f"each of the {tta['looked_at']} images with top probability under "
                 f"{tta['unsure_below']:g}")
        headline = (f"{held} accuracy {tta['accuracy']:.2%} with test-time augmentation "
                    f"({which} and its four 1-pixel shifts averaged; {tta['without']:.2%} "
                    f"without) after {n} epoch{'s' if n != 1 else ''}")
    run.summary = _summary(run)
    figs = Figures()
    out = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
           f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1><p>{html.escape(headline)}</p>",
           "<h2>Diagnosis</h2>", findings_html(findings),
           "<h2>Settings</h2>", table_html(_settings(run), left=("setting", "value")),
           "<h2>Epochs</h2>", table_html(_epochs(run.values))]
    h = run.history
    if h.losses:
        # the PNGs the run wrote from the same history, drawn again only when missing
        loss, sched = run.path / "loss.png", run.path / "sched.png"
        out += ["<h2>Loss and schedule</h2>",
                _img(_file_png(loss), "loss") if loss.is_file()
                else figs.img(lambda: plots.plot_loss(h), "loss"),
                _img(_file_png(sched), "schedule") if sched.is_file()
                else figs.img(lambda: plots.plot_sched(h), "schedule")]
    lr_find = run.path / "lr_find.png"
    if lr_find.is_file():
        out += ["<h2>Learning rate finder</h2>", _img(_file_png(lr_find), "lr_find")]
    it = run.interpretation
    if it is not None and len(it):
        worst = [{"actual": a, "predicted": p, "images": c}
                 for a, p, c in it.most_confused()[:10]]
        per_class = [{"class": r["class"], "images": r["images"],
                      "accuracy": f"{r['accuracy']:.2%}"} for r in it.per_class_accuracy()]
        out += [f"<h2>What the model gets wrong ({held} set)</h2>",
                figs.img(it.plot_confusion_matrix, "confusion matrix"),
                "<h3>Most confused</h3>", table_html(worst, left=("actual", "predicted")),
                "<h3>Accuracy per class</h3>", table_html(per_class, left=("class",))]
        if it.images is not None:
            out += ["<h3>Largest losses</h3><p>Each image titled predicted/actual, the "
                    "probability of the prediction, and the loss.</p>",
                    figs.img(lambda: it.plot_top_losses(9), "top losses")]
    if run.summary is not None:
        out += ["<h2>Model summary</h2>", f"<pre>{html.escape(str(run.summary))}</pre>"]
    batch_png = run.path / "show_batch.png"
    if batch_png.is_file():
        src = _file_png(batch_png)
        what = ("as the model is fed it: augmented (random crops and flips)"
                if run.config.get("augment") else "as the model is fed it")
        out += [f"<h2>A training batch</h2><p>{what}</p>", _img(src, "show_batch")]
    g = run.gradients
    if g is not None and g.batches:
        out += ["<h2>Gradients and steps</h2>",
                f"<p>Per layer (numbered as in the model summary) and training step: how far "
                f"the step moved the weights relative to their size, and the gradient norm; "
                f"recorded on {len(g.batches)} steps. Around 1e-3 is usual; a layer 100x below "
                f"the others barely learns, one above 1e-1 is pushed too hard.</p>",
                figs.img(lambda: plots.plot_gradient_stats(g), "gradient statistics")]
    s = run.stats
    if s is not None and s.batches:
        blocks = _blocks(run)
        out += ["<h2>Activations</h2>",
                f"<p>The output of each conv block (after its ReLU), recorded on "
                f"{len(s.batches)} training batches (one in {s.every}); near zero means "
                f"|x| &le; {s.zero_thresh:g}. Block <i>k</i> holds the summary's layers "
                f"<i>k</i>.0, <i>k</i>.1, ... Between 40% and 60% near zero is normal after a "
                f"ReLU, which zeroes the negative half; a block near 100% is dead.</p>",
                figs.img(lambda: plots.dead_chart(s), "dead chart")]
        for i, name in enumerate(s.layer_names):
            layers = f" (layers {blocks[name]})" if name in blocks else ""
            out += [f"<h3>Block {html.escape(name)}{html.escape(layers)}</h3>"
                    f"<div class='layer'>",
                    figs.img(lambda i=i: plots.plot_layer_stats(s, i), f"block {name} stats"),
                    figs.img(lambda i=i: plots.color_dim(s, i, recorder=h),
                             f"block {name} color_dim"),
                    "</div>"]
    out.append("</body></html>")
    return figs.fill("\n".join(out))


def build_report(run_dir: str | Path) -> Path:
    """Write `report.html` into the run folder (atomically) and return its path."""
    run = load_run(run_dir)
    path = run.path / "report.html"
    atomic_write_bytes(path, render(run).encode())
    return path
