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
import io
import json
from dataclasses import dataclass
from pathlib import Path

from convscope.callbacks.activation_stats import ActivationStats
from convscope.callbacks.recorder import History
from convscope.config import describe
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
        config = json.loads((path / "config.json").read_text())
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
    return Run(path, config, values, history, stats, model_meta)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(src: str, alt: str) -> str:
    return f'<img src="{src}" alt="{html.escape(alt)}">'


def _summary_text(run: Run) -> str | None:
    meta = run.model_meta
    if meta.get("model") != "simple_cnn" or "input_shape" not in meta:
        return None
    from convscope.model_summary import summary
    from convscope.models import simple_cnn

    shape = tuple(json.loads(meta["input_shape"]))
    model = simple_cnn(in_channels=int(meta["in_channels"]), n_classes=int(meta["n_classes"]))
    return str(summary(model, shape))


def render(run: Run) -> str:
    """The report page for a loaded run, as HTML text."""
    from convscope import plots

    findings = diagnose(stats=run.stats, history=run.history)
    title = f"convscope run: {run.path.name}"
    last = run.values[-1] if run.values else {}
    n = len(run.values)
    headline = (f"accuracy {last['accuracy']:.2%} after {n} epoch{'s' if n != 1 else ''}"
                if "accuracy" in last else "no epoch finished")
    out = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
           f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1><p>{html.escape(headline)}</p>",
           "<h2>Diagnosis</h2>", findings_html(findings),
           "<h2>Settings</h2>",
           table_html([dict(zip(("setting", "value"), describe(k, v), strict=True))
                   for k, v in run.config.items()], left=("setting", "value")),
           "<h2>Epochs</h2>", table_html(run.values)]
    h = run.history
    if h.losses:
        out += ["<h2>Loss and schedule</h2>",
                _img(_png(plots.plot_loss(h)), "loss"),
                _img(_png(plots.plot_sched(h)), "schedule")]
    summary_text = _summary_text(run)
    if summary_text:
        out += ["<h2>Model summary</h2>", f"<pre>{html.escape(summary_text)}</pre>"]
    batch_png = run.path / "show_batch.png"
    if batch_png.is_file():
        src = "data:image/png;base64," + base64.b64encode(batch_png.read_bytes()).decode()
        out += ["<h2>A training batch</h2>", _img(src, "show_batch")]
    s = run.stats
    if s is not None and s.batches:
        out += ["<h2>Activations</h2>",
                f"<p>Recorded on {len(s.batches)} training batches (one in {s.every}); "
                f"near zero means |x| &le; {s.zero_thresh:g}.</p>",
                _img(_png(plots.dead_chart(s)), "dead chart")]
        for i, name in enumerate(s.layer_names):
            out += [f"<h3>Layer {html.escape(name)}</h3><div class='layer'>",
                    _img(_png(plots.plot_layer_stats(s, i)), f"layer {name} stats"),
                    _img(_png(plots.color_dim(s, i, recorder=h)), f"layer {name} color_dim"),
                    "</div>"]
    out.append("</body></html>")
    return "\n".join(out)


def build_report(run_dir: str | Path) -> Path:
    """Write `report.html` into the run folder (atomically) and return its path."""
    run = load_run(run_dir)
    path = run.path / "report.html"
    atomic_write_bytes(path, render(run).encode())
    return path
