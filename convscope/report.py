"""The HTML report: one self-contained page per run folder, the diagnosis at the top.

Built only from what the run folder holds (config.json, metrics.csv, history.json,
activation_stats.safetensors, model.safetensors, show_batch.png), so `convscope report
RUN_DIR` can rebuild it at any time. Images are inlined as data URIs and the page has no
script: it opens anywhere, offline, and can be mailed as one file.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from pathlib import Path

from convscope import run_folder
from convscope.config import describe
from convscope.diagnosis import diagnose
from convscope.display import findings_html, table_html
from convscope.files import atomic_write_bytes
from convscope.recipes import book_line, overridden
from convscope.run_folder import MODEL_SHA256, Run, load_run

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
    """The model summary the run recorded (history.json), or None for a run without one."""
    from convscope.model_summary import Summary

    recorded = run.history.meta.get("summary")
    if isinstance(recorded, dict):
        try:
            return Summary.from_dict(recorded)
        except (KeyError, TypeError, ValueError):
            return None
    # a run written before summaries were recorded: a built-in model is rebuilt from its
    # metadata (a user's model never is: that would run their file again)
    from convscope.errors import UsageError
    from convscope.model_summary import summary
    from convscope.models import simple_cnn_from_metadata

    try:
        model = simple_cnn_from_metadata(run.model_meta)
        return summary(model, tuple(json.loads(run.model_meta["input_shape"])))
    except (UsageError, KeyError, ValueError):
        return None


def _settings(run: Run) -> list[dict]:
    """The config in words (a value the run changed from its recipe says so), then what the
    run recorded it was: model, optimizer, schedule, callbacks, images, classes."""
    changed = overridden(run.config)
    built_in = run.config.get("model", "simple_cnn") in ("simple_cnn", "book_first")
    # the model's own row (below) says what it is; simple_cnn's shape options only where
    # they shaped it
    skip = {"model", MODEL_SHA256} if run.model_meta.get("model") else {MODEL_SHA256}
    if not built_in:
        skip |= {"widths", "first_ks", "bn"}
    rows = []
    for k, v in run.config.items():
        if k in skip:
            continue
        label, value = describe(k, v)
        if k in changed:
            value = f"{value} (the recipe's: {describe(k, changed[k])[1]})"
        if k == "tta" and v and run.result.tta and not run.result.augmented:
            value += " (and skipped: see the result above)"
        rows.append({"setting": label, "value": value})
    meta, hist = run.model_meta, run.history.meta
    if meta.get("model"):
        rows.append({"setting": "model", "value": _model_words(meta)})
    if hist.get("optimizer"):
        rows.append({"setting": "optimizer", "value": hist["optimizer"]})
    done = hist.get("callbacks", {})
    lr = run.config.get("lr")
    if "param_scheduler" in done:
        rows.append({"setting": "lr schedule", "value": done["param_scheduler"]})
    elif lr is not None:
        rows.append({"setting": "lr schedule", "value": f"constant lr {lr:g} (fit)"})
    for name, words in done.items():
        if name != "param_scheduler":
            rows.append({"setting": f"callback {name}", "value": words})
    if hist.get("n_train") is not None:
        held = hist.get("held_out", "valid")
        rows.append({"setting": "images", "value": f"{hist['n_train']:,} train, "
                     f"{hist['n_valid']:,} {held}"})
    classes = _classes(meta)
    if classes:
        rows.append({"setting": "classes", "value": f"{len(classes)}: "
                     + ", ".join(classes[:20]) + (", ..." if len(classes) > 20 else "")})
    return rows


def _classes(meta: dict) -> list[str]:
    """The class names the weights' metadata records ([] when it holds none, or no list of
    names: the report still shows the rest)."""
    try:
        classes = json.loads(meta.get("classes") or "[]")
    except ValueError:
        return []
    return [str(c) for c in classes] if isinstance(classes, list) else []


def _model_words(meta: dict) -> str:
    """The model as its weights' metadata records it."""
    if meta.get("model") not in ("simple_cnn", "book_first"):
        digest = meta.get("model_sha256", "")
        return (f"{meta.get('model', '?')}: your function"
                + (f" (file SHA-256 {digest[:12]}...)" if digest else ""))
    if "widths" not in meta:
        return meta.get("model", "?")
    block = ("conv -> batchnorm -> ReLU" if json.loads(meta.get("bn", "true"))
             else "conv -> ReLU (no batchnorm)")
    widths = json.loads(meta.get("widths", "[8, 16, 32, 64]"))
    return (f"{meta['model']}: conv blocks of {block}, widths "
            f"{'-'.join(map(str, widths))}-{meta.get('n_classes', '?')}, stride 2, a "
            f"{meta.get('first_ks', 5)}x{meta.get('first_ks', 5)} first kernel; input "
            f"{'x'.join(map(str, json.loads(meta.get('input_shape', '[]'))))}")


def _epochs(values: list[dict]) -> list[dict]:
    """The epoch table as read: accuracy in percent (the last row's with test-time
    augmentation beside it, where the run used it), time labelled in seconds."""
    import math

    rows = []
    for v in values:
        row = {k: v[k] for k in v if k not in ("accuracy", "accuracy_tta", "time")}
        if "accuracy" in v:
            row["accuracy"] = f"{v['accuracy']:.2%}"
        if "accuracy_tta" in v:
            tta = v["accuracy_tta"]
            row["with test-time augmentation"] = f"{tta:.2%}" if math.isfinite(tta) else ""
        if "time" in v:
            row["time (s)"] = f"{v['time']:.1f}"
        rows.append(row)
    return rows


def _blocks(summary) -> dict[str, str]:
    """Each recorded block's name -> the summary's layers it holds ("0" -> "0.0-0.2")."""
    rows = summary.rows if summary is not None else []
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r["layer"].split(".")[0], []).append(r["layer"])
    return {k: (v[0] if len(v) == 1 else f"{v[0]}-{v[-1]}") for k, v in out.items()}


def _head(run: Run) -> list[str]:
    """Title, the run's result (convscope.result: the accuracy every page shows), and what the
    book printed for the same recipe when the run trained it as named."""
    title = f"convscope run: {run.path.name}"
    line = run.result.line(len(run.values))
    book = book_line(run.config)
    line += f"; {book}" if book and run.values else ""
    return [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
            f"<h1>{html.escape(title)}</h1><p class='result'>{html.escape(line)}</p>"]


def _diagnosis(run: Run) -> list[str]:
    found = diagnose(stats=run.stats, history=run.history, gradients=run.gradients)
    return ["<h2>Diagnosis</h2>", findings_html(found)]


def _settings_section(run: Run) -> list[str]:
    return ["<h2>Settings</h2>", table_html(_settings(run), left=("setting", "value")),
            "<h2>Epochs</h2>", table_html(_epochs(run.values))]


def _curves(run: Run, figs: Figures) -> list[str]:
    from convscope import plots

    h = run.history
    if not h.losses:
        return []
    # the PNGs the run wrote from the same history, drawn again only when missing
    loss, sched = run.path / run_folder.LOSS_PNG, run.path / run_folder.SCHED_PNG
    out = ["<h2>Loss and schedule</h2>",
           "<p>Faint vertical lines: epoch ends."
           + (" Dashed red: where the training set changed (a callback made the epochs from "
              "there draw other images)." if h.marks else "") + "</p>",
           _img(_file_png(loss), "loss") if loss.is_file()
           else figs.img(lambda: plots.plot_loss(h, skip_start=0), "loss"),
           _img(_file_png(sched), "schedule") if sched.is_file()
           else figs.img(lambda: plots.plot_sched(h), "schedule")]
    lr_find = run.path / run_folder.LR_FIND
    if lr_find.is_file():
        out += ["<h2>Learning rate finder</h2>", _img(_file_png(lr_find), "lr_find")]
    return out


def _mistakes(run: Run, figs: Figures) -> list[str]:
    it = run.interpretation
    if it is None or not len(it):
        return []
    held = run.history.meta.get("held_out", "valid")
    worst = [{"actual": a, "predicted": p, "images": c}
             for a, p, c in it.most_confused()[:10]]
    per_class = [{"class": r["class"], "images": r["images"],
                  "accuracy": f"{r['accuracy']:.2%}"} for r in it.per_class_accuracy()]
    counted = (" (the predictions the result counts: with test-time augmentation)"
               if run.result.augmented else "")
    out = [f"<h2>What the model gets wrong ({held} set)</h2>",
           f"<p>{html.escape(counted)}</p>" if counted else "",
           figs.img(lambda: it.plot_confusion_matrix(held_out=held), "confusion matrix"),
           "<h3>Most confused</h3>", table_html(worst, left=("actual", "predicted")),
           "<h3>Accuracy per class</h3>", table_html(per_class, left=("class",))]
    if it.images is not None:
        out += ["<h3>Largest losses</h3><p>Each image titled predicted/actual, the "
                "probability of the prediction, and the loss.</p>",
                figs.img(lambda: it.plot_top_losses(9), "top losses")]
    return out


def _model(summary) -> list[str]:
    if summary is None:
        return []
    return ["<h2>Model summary</h2>", f"<pre>{html.escape(str(summary))}</pre>"]


def _batch(run: Run) -> list[str]:
    batch_png = run.path / run_folder.SHOW_BATCH
    if not batch_png.is_file():
        return []
    what = ("as the model is fed it: augmented (random crops and flips)"
            if run.config.get("augment") else "as the model is fed it")
    return [f"<h2>A training batch</h2><p>{what}</p>", _img(_file_png(batch_png), "show_batch")]


def _gradients(run: Run, figs: Figures) -> list[str]:
    from convscope import plots

    g = run.gradients
    if g is None or not g.batches:
        return []
    return ["<h2>Gradients and steps</h2>",
            f"<p>Per layer (numbered as in the model summary) and training step: how far "
            f"the step moved the weights relative to their size, and the gradient norm; "
            f"recorded on {len(g.batches)} step{'s' if len(g.batches) != 1 else ''}. Around "
            f"1e-3 is usual; a layer 100x below "
            f"the others barely learns, one above 1e-1 is pushed too hard.</p>",
            figs.img(lambda: plots.plot_gradient_stats(g), "gradient statistics")]


def _activations(run: Run, figs: Figures, summary) -> list[str]:
    from convscope import plots

    s, h = run.stats, run.history
    if s is None or not s.batches:
        return []
    blocks = _blocks(summary)
    n = len(s.batches)
    every = "every batch" if s.every == 1 else f"one in {s.every}"
    numbered = ("Block <i>k</i> holds the summary's layers <i>k</i>.0, <i>k</i>.1, ... "
                if run.model_meta.get("model") in ("simple_cnn", "book_first") else
                "Each block is a module of the model, named as in the summary. ")
    out = ["<h2>Activations</h2>",
           f"<p>The output of each conv block (after its ReLU), recorded on {n} training "
           f"batch{'es' if n != 1 else ''} ({every}); near zero means "
           f"|x| &le; {s.zero_thresh:g}. {numbered}Between 40% and 60% near zero is normal "
           f"after a ReLU, which zeroes the negative half; a block near 100% is dead. A block "
           f"that ends without a ReLU (simple_cnn's last, whose outputs are the logits) "
           f"has signed outputs, and few of them near zero.</p>",
           figs.img(lambda: plots.dead_chart(s), "dead chart")]
    for i, name in enumerate(s.layer_names):
        layers = f" (layers {blocks[name]})" if name in blocks else ""
        out += [f"<h3>Block {html.escape(name)}{html.escape(layers)}</h3>"
                f"<div class='layer'>",
                figs.img(lambda i=i: plots.plot_layer_stats(s, i), f"block {name} stats"),
                figs.img(lambda i=i: plots.color_dim(s, i, recorder=h),
                         f"block {name} color_dim"),
                "</div>"]
    return out


def render(run: Run) -> str:
    """The report page for a loaded run, as HTML text: one section after another."""
    figs = Figures()
    summary = _summary(run)
    out = [*_head(run), *_diagnosis(run), *_settings_section(run), *_curves(run, figs),
           *_mistakes(run, figs), *_model(summary), *_batch(run), *_gradients(run, figs),
           *_activations(run, figs, summary), "</body></html>"]
    return figs.fill("\n".join(out))


def build_report(run_dir: str | Path) -> Path:
    """Write `report.html` into the run folder (atomically) and return its path."""
    run = load_run(run_dir)
    path = run.path / run_folder.REPORT
    atomic_write_bytes(path, render(run).encode())
    return path
