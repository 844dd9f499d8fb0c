"""Plots: the only module that imports matplotlib. Every function returns its figure and can
save it as a PNG; none touches pyplot's global state, so they are safe in scripts and threads.

The figures are `Figure`s (matplotlib's, plus `_repr_png_`): returned as a notebook cell's value
they show as an image, once, with no `%matplotlib` magic; in a script nothing pops up.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure as _MplFigure
from torch import Tensor

from convscope.errors import UsageError
from convscope.files import atomic_write_bytes


class Figure(_MplFigure):
    """A matplotlib Figure that a Jupyter notebook shows as a PNG when it is a cell's value.

    Made without pyplot, so no backend shows it a second time and scripts open no window."""

    def _repr_png_(self) -> bytes:
        return png_bytes(self)

    def __repr__(self) -> str:
        w, h = self.get_size_inches()
        return f"<Figure {w:g}x{h:g} in, {len(self.axes)} axes>"


def png_bytes(fig: _MplFigure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes, drawn once.

    Every figure here lays itself out (tight_layout) when it is made, so this draws it on an
    Agg canvas and encodes the pixels: `savefig` would draw it twice (once more to measure for
    `bbox_inches="tight"`, or, after tight_layout, to run the layout engine it leaves behind),
    and drawing is most of a report's time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.image import imsave

    canvas = FigureCanvasAgg(fig)
    old = fig.dpi
    fig.dpi = dpi
    try:
        canvas.draw()
        buf = io.BytesIO()
        imsave(buf, canvas.buffer_rgba(), format="png", dpi=dpi)
    finally:
        fig.dpi = old
    return buf.getvalue()


def _batch_span(batches: Sequence[int]) -> tuple[float, float]:
    """The x extent of a histogram image over recorded batches; one recorded batch gets a
    width (identical limits make matplotlib warn), none gives (0, 1)."""
    if not batches:
        return 0, 1
    first, last = batches[0], batches[-1]
    if last <= first:
        return first - 0.5, first + 0.5
    # each column stands for the batches up to the next record: the last one's too, so the
    # image reaches the end of training instead of stopping a recording interval short
    return first, last + (batches[-1] - batches[-2])


def _dot(xs) -> str | None:
    """A marker for a series of a point or two (a tiny run's): a line through one point is
    invisible."""
    return "o" if len(xs) < 3 else None


def save_figure(fig: Figure, path: str | Path | None, dpi: int = 100) -> Figure:
    """Write `fig` to `path` as PNG, atomically; a None path does nothing."""
    if path is not None:
        atomic_write_bytes(path, png_bytes(fig, dpi))
    return fig


def show_images(images: Tensor, labels: Sequence[str] | None = None,
                save: str | Path | None = None, ncols: int | None = None) -> Figure:
    """A grid of uint8 images (N, C, H, W), C = 1 or 3, each titled with its label."""
    n = len(images)
    if n == 0:
        raise UsageError("No images to show: received an empty batch.")
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(1.6 * ncols, 1.7 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        img = images[i].permute(1, 2, 0).numpy()  # (H, W, C)
        if img.shape[-1] == 1:
            ax.imshow(img[..., 0], cmap="gray_r" if img.mean() < 128 else "gray", vmin=0,
                      vmax=255)
        else:
            ax.imshow(img)
        if labels is not None:
            ax.set_title(str(labels[i]), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, save)


def plot_loss(recorder, skip_start: int = 5, with_valid: bool = True,
              save: str | Path | None = None) -> Figure:
    """Train loss per batch (raw, faint; smoothed, solid) and valid loss at each epoch's end."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    steps = range(skip_start, len(recorder.losses))
    dot = "o" if len(steps) < 3 else None  # a line through one point shows nothing
    ax.plot(steps, recorder.losses[skip_start:], alpha=0.3, label="train (per batch)",
            marker=dot)
    ax.plot(steps, recorder.smooth_losses[skip_start:], label="train (smoothed)", marker=dot)
    if with_valid and recorder.values:
        ax.plot(recorder.epoch_ends, [v["valid_loss"] for v in recorder.values], "o-",
                label="valid")
    ax.set_xlabel("batch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    draw_epochs(ax, recorder)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, save)


def draw_epochs(ax, recorder) -> None:
    """Epoch boundaries as faint lines, and each change of the training set (the Recorder's
    marks) as a dashed line labelled with what the epochs from there draw."""
    marks = {m["batch"]: m for m in getattr(recorder, "marks", [])}
    for end in recorder.epoch_ends[:-1]:
        if end not in marks:
            ax.axvline(end, color="0.6", lw=0.6, zorder=0)
    for i, m in enumerate(sorted(marks.values(), key=lambda m: m["batch"])):
        label = (f"training set changed: {m['images']:,} of {m['of']:,} images"
                 if i == 0 else None)
        ax.axvline(m["batch"], color="tab:red", ls="--", lw=0.9, label=label, zorder=0)
        ax.annotate(f"epoch {m['epoch'] + 1}: {m['images']:,}", (m["batch"], 0), fontsize=7,
                    xycoords=("data", "axes fraction"), xytext=(2, 3 + 10 * (i % 3)),
                    textcoords="offset points", color="tab:red")  # staggered: no overlap


def plot_sched(recorder, save: str | Path | None = None) -> Figure:
    """Learning rate and momentum (Adam's beta1) of the first param group, per batch."""
    fig = Figure(figsize=(9, 3.5))
    axes = fig.subplots(1, 2)
    labels = ("learning rate", "momentum / beta1")
    for ax, name, label in zip(axes, ("lr", "mom"), labels, strict=True):
        ys = [groups[0] for groups in recorder.hps[name]]
        ax.plot(ys, marker=_dot(ys))
        ax.set_xlabel("batch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, save)


def _show_response(ax, response: Tensor, title: str) -> None:
    """A filtered image: one channel, any sign; grey scaled to its own min..max."""
    ax.imshow(response.numpy(), cmap="gray")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def show_filtered(image: Tensor, response: Tensor, kernel_name: str,
                  save: str | Path | None = None) -> Figure:
    """The image (C, H, W) in 0..1 beside what one kernel makes of it (H', W')."""
    fig = Figure(figsize=(6, 3.2))
    a, b = fig.subplots(1, 2)
    a.imshow(image.permute(1, 2, 0).numpy().squeeze(), cmap="gray" if len(image) == 1 else None)
    a.set_title("image", fontsize=9)
    a.set_axis_off()
    _show_response(b, response, kernel_name)
    fig.tight_layout()
    return save_figure(fig, save)


def kernel_grid(image: Tensor, responses: dict[str, Tensor],
                save: str | Path | None = None) -> Figure:
    """The image (C, H, W) in 0..1 and its response to each named kernel, in a grid."""
    n = len(responses) + 1
    ncols = min(n, 5)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(2.2 * ncols, 2.3 * nrows))
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    axes[0].imshow(image.permute(1, 2, 0).numpy().squeeze(),
                   cmap="gray" if len(image) == 1 else None)
    axes[0].set_title("image", fontsize=9)
    for ax, (name, resp) in zip(axes[1:], responses.items(), strict=False):
        _show_response(ax, resp, name)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    return save_figure(fig, save)


def plot_conv_matrix(ids: Tensor, in_shape: tuple[int, ...], out_hw: tuple[int, int],
                     save: str | Path | None = None) -> Figure:
    """The conv matrix as a heatmap: each kernel weight its own colour, zeros left blank.

    Args:
        ids: the conv matrix built from a kernel holding 1..K (see `conv_matrix_stats`), so
            each entry names the weight it holds and 0 marks a structural zero.
    """
    import numpy as np
    from matplotlib import colormaps

    k = int(ids.max())
    rows, cols = ids.shape
    fig = Figure(figsize=(min(2 + cols * 0.35, 14), min(1.5 + rows * 0.35, 12)))
    ax = fig.subplots()
    masked = np.ma.masked_equal(ids.numpy(), 0)
    cmap = colormaps["tab20"].resampled(max(k, 2)).with_extremes(bad="white")
    im = ax.imshow(masked, cmap=cmap, vmin=0.5, vmax=k + 0.5, aspect="equal")
    ax.set_xticks(np.arange(-0.5, cols, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, rows, 1), minor=True)
    ax.grid(which="minor", color="#ddd", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel(f"input pixel (flattened {' x '.join(map(str, in_shape))})")
    ax.set_ylabel(f"output pixel (flattened {out_hw[0]} x {out_hw[1]})")
    zeros = 1 - int((ids != 0).sum()) / ids.numel()
    ax.set_title(f"conv as a matrix: {rows} x {cols}, {zeros:.0%} zeros, {k} shared weights",
                 fontsize=10)
    if k <= 25:
        fig.colorbar(im, ax=ax, ticks=range(1, k + 1), label="kernel weight #", shrink=0.8)
    fig.tight_layout()
    return save_figure(fig, save)


def plot_layer_stats(stats, idx: int | str, save: str | Path | None = None) -> Figure:
    """The book's plot_layer_stats: mean, std and % near zero of one layer per batch."""
    i = stats._layer(idx)
    fig = Figure(figsize=(12, 3.2))
    axes = fig.subplots(1, 3)
    series = (stats.means(i), stats.stds(i), 100 * stats.near_zero(i))
    titles = ("mean", "std", f"% near zero (|x| <= {stats.zero_thresh:g})")
    for ax, y, title in zip(axes, series, titles, strict=True):
        ax.plot(stats.batches, y.numpy(), marker=_dot(stats.batches))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("batch")
        ax.grid(alpha=0.3)
    axes[2].set_ylim(-3, 103)  # a dead layer sits at exactly 100%: keep the line visible
    fig.suptitle(f"block {stats.layer_names[i]}", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, save)


def color_dim(stats, idx: int | str, recorder=None, save: str | Path | None = None) -> Figure:
    """The book's colorful dimension: log(1 + histogram counts) of one layer as an image, one
    column per recorded batch, the lowest bin at the bottom; with a colour bar, and the
    learning rate drawn along the time axis when a Recorder is given."""
    import numpy as np

    i = stats._layer(idx)
    hist = stats.hist(i)  # (records, bins)
    lo, hi = stats.ranges[i]
    fig = Figure(figsize=(8, 3.6))
    ax = fig.subplots()
    lrs = [g[0] for g in recorder.hps["lr"]] if recorder is not None else []
    first, last = _batch_span(stats.batches)
    centred = len(stats.batches) == 1  # one recorded batch: a column centred on it
    if centred and len(lrs) > stats.batches[0] + 1:  # it stands for the batches to the end
        first, last, centred = stats.batches[0], len(lrs), False
    im = ax.imshow(np.log1p(hist.T.numpy()), origin="lower", aspect="auto", cmap="viridis",
                   extent=(first, last, lo, hi))
    # room on the right for the learning rate's axis and label between plot and colour bar
    fig.colorbar(im, ax=ax, label="log(1 + count)", pad=0.16 if recorder is not None else 0.04)
    ax.set_xlabel("batch")
    ax.set_ylabel("activation")
    ax.set_title(f"block {stats.layer_names[i]}: histogram over training", fontsize=10)
    if lrs:
        lr_ax = ax.twinx()
        # batch k's rate at the middle of its slot, [k, k + 1) in the columns (or on the one
        # centred column): the line spans the histogram, however short the run
        mid = 0.0 if centred else 0.5
        lr_ax.plot([k + mid for k in range(len(lrs))], lrs, color="white", linewidth=1.2,
                   alpha=0.8, marker=_dot(lrs))
        lr_ax.set_ylabel("learning rate (white)")
        lr_ax.set_ylim(0, max(lrs) * 1.05)
        if not centred:  # the last column stands for a record's interval; training may have
            ax.set_xlim(first, min(last, len(lrs)))  # ended sooner: the view stops there
    fig.tight_layout()
    return save_figure(fig, save)


def dead_chart(stats, save: str | Path | None = None) -> Figure:
    """% of activations near zero of every recorded layer over training."""
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    for i, name in enumerate(stats.layer_names):
        ax.plot(stats.batches, 100 * stats.near_zero(i).numpy(), label=f"block {name}",
                marker="o" if len(stats.batches) < 3 else None)
    ax.set_ylim(-3, 103)
    ax.set_xlabel("batch")
    ax.set_ylabel(f"% near zero (|x| <= {stats.zero_thresh:g})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, save)


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], suggestions=None,
                 save: str | Path | None = None, note: str = "") -> Figure:
    """The lr_find curve: smoothed loss against learning rate (log scale), with the
    suggested rates marked, and `note` (why a suggestion is missing) as its title."""
    import textwrap

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(lrs, losses)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.grid(alpha=0.3)
    if suggestions is not None:
        for (name, lr), colour in zip(vars(suggestions).items(), ("C1", "C2", "C3"),
                                      strict=True):
            if lr is not None:  # no minimum when the loss never turned up
                ax.axvline(lr, color=colour, linestyle="--", label=f"{name}: {lr:.2g}")
        ax.legend()
    if note:  # the plot is read alone (a PNG, the report): it says what the line printed
        ax.set_title(textwrap.fill(note, 70), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, save)


def plot_confusion_matrix(cm: Tensor, classes: Sequence[str],
                          save: str | Path | None = None, held_out: str = "valid") -> Figure:
    """Counts of (actual, predicted) pairs, each cell labelled, the diagonal being right."""
    n = len(classes)
    side = min(2.5 + 0.45 * n, 12)
    fig = Figure(figsize=(side, side))
    ax = fig.subplots()
    ax.imshow(cm.numpy(), cmap="Blues")
    top = int(cm.max()) if cm.numel() else 0
    if n <= 30:
        for a in range(n):
            for p in range(n):
                v = int(cm[a, p])
                ax.text(p, a, str(v), ha="center", va="center", fontsize=8,
                        color="white" if v > top / 2 else "black")
    ax.set_xticks(range(n), [str(c) for c in classes], rotation=90 if n > 10 else 0)
    ax.set_yticks(range(n), [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"confusion matrix ({held_out} set)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, save)


def plot_gradient_stats(gstats, save: str | Path | None = None) -> Figure:
    """Per layer over training: the step's size relative to the weights, and the gradient
    norm (log scales)."""
    # constrained layout makes room beside the panels for the legend they share
    fig = Figure(figsize=(12, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for i, name in enumerate(gstats.layer_names):
        for ax, column in zip(axes, ("update_ratio", "grad_norm"), strict=True):
            y = gstats.series(column, i).numpy()
            ax.plot(gstats.batches, y.clip(min=1e-12), linewidth=1, label=name,
                    marker=_dot(gstats.batches))
    for ax, title in zip(axes, ("update / weight (norm ratio per step)", "gradient norm"),
                         strict=True):
        ax.set_yscale("log")
        ax.set_xlabel("batch")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    # both panels draw the same layers in the same colours: one legend explains both
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=7,
               title="layer", title_fontsize=7)
    return save_figure(fig, save)


def in_epochs(history) -> list[float]:
    """Each recorded training batch's place in epochs (batch i of epoch e, of n batches: e +
    (i + 1) / n), so runs of other batch sizes or epoch lengths line up."""
    ends = list(history.epoch_ends)
    total = len(history.losses)
    if not ends or ends[-1] < total:  # a fit stopped mid-epoch: its batches past the last end
        ends.append(total)
    out, start = [], 0
    for e, end in enumerate(ends):
        n = max(end - start, 1)
        out += [e + (i + 1) / n for i in range(end - start)]
        start = end
    return out[:total]


def compare_curves(histories: Sequence, names: Sequence[str],
                   save: str | Path | None = None) -> Figure:
    """Several runs' curves overlaid on one axis of epochs, one colour and dash per run:
    smoothed train loss with the valid loss at each epoch's end, accuracy per epoch, learning
    rate and momentum."""
    from matplotlib.lines import Line2D

    # constrained layout makes room above the panels for the legend they share
    fig = Figure(figsize=(12, 7), layout="constrained")
    (loss_ax, acc_ax), (lr_ax, mom_ax) = fig.subplots(2, 2)
    dashes = ["-", "--", "-.", ":"]
    shapes = ["o", "s", "^", "D", "v"]  # a point of one run does not hide another's
    accs: list[float] = []
    keys = []  # one entry per run, in its colour, dash and marker: every panel draws it so
    for k, (h, name) in enumerate(zip(histories, names, strict=True)):
        colour, dash, shape = f"C{k % 10}", dashes[k % len(dashes)], shapes[k % len(shapes)]
        keys.append(Line2D([], [], color=colour, ls=dash, marker=shape, markersize=5,
                           label=name))
        x = in_epochs(h)
        dot = "o" if len(x) < 3 else None  # a run of a batch or two: points, not a line
        loss_ax.plot(x, h.smooth_losses[:len(x)], dash, color=colour, label=name, marker=dot)
        if h.values:
            ends = [e + 1 for e in range(len(h.values))]
            loss_ax.plot(ends, [v["valid_loss"] for v in h.values], shape, color=colour,
                         markersize=4)
            acc = [100 * v.get("accuracy", math.nan) for v in h.values]
            accs += [a for a in acc if math.isfinite(a)]
            acc_ax.plot(ends, acc, shape + dash, color=colour, label=name, markersize=7 - k,
                        alpha=0.85)
        for m in getattr(h, "marks", []):  # where this run's epochs began to draw fewer images
            for ax in (loss_ax, lr_ax, mom_ax):
                ax.axvline(m["epoch"], color=colour, ls=dash, lw=0.8, alpha=0.5)
        for ax, hp in ((lr_ax, "lr"), (mom_ax, "mom")):
            ax.plot(x, [g[0] for g in h.hps.get(hp, [])][:len(x)], dash, color=colour,
                    label=name, marker=dot)
    loss_ax.set_yscale("log")
    peaks = [max(g[0] for g in h.hps["lr"]) for h in histories if h.hps.get("lr")]
    if peaks and max(peaks) > 10 * min(peaks):  # on a linear axis the lower runs lie flat
        lr_ax.set_yscale("log")
    if accs:  # the data's range with room, within 0-100: one epoch's point is not a range
        lo, hi = min(accs), max(accs)
        pad = max((hi - lo) * 0.15, 0.5)
        acc_ax.set_ylim(max(lo - pad, 0), min(hi + pad, 100))
    for ax, title in ((loss_ax, "loss: train smoothed (line), valid (dots)"),
                      (acc_ax, "accuracy (%) at each epoch's end"),
                      (lr_ax, "learning rate"), (mom_ax, "momentum / beta1")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    fig.legend(handles=keys, loc="outside upper center", ncol=min(len(keys), 6), fontsize=8)
    return save_figure(fig, save)


def compare_color_dim(stats: Sequence, names: Sequence[str], layer: str,
                      save: str | Path | None = None) -> Figure:
    """One layer's color_dim for each run that recorded it, side by side on one colour scale
    and one histogram range, so darker means fewer activations in every panel."""
    import numpy as np
    from matplotlib.colors import Normalize

    panels = [(s, n) for s, n in zip(stats, names, strict=True)
              if s is not None and layer in s.layer_names and s.batches]
    # constrained layout makes room for a colour bar shared by several axes
    fig = Figure(figsize=(4 * max(len(panels), 1) + 1, 3.4), layout="constrained")
    if not panels:
        return save_figure(fig, save)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    top = max(float(np.log1p(s.hist(layer).numpy()).max()) for s, _ in panels) or 1.0
    norm = Normalize(vmin=0, vmax=top)
    lo = min(s.ranges[s._layer(layer)][0] for s, _ in panels)
    hi = max(s.ranges[s._layer(layer)][1] for s, _ in panels)
    im = None
    for ax, (s, name) in zip(axes, panels, strict=True):
        i = s._layer(layer)
        first, last = _batch_span(s.batches)
        r_lo, r_hi = s.ranges[i]
        im = ax.imshow(np.log1p(s.hist(i).T.numpy()), origin="lower", aspect="auto",
                       cmap="viridis", norm=norm, extent=(first, last, r_lo, r_hi))
        ax.set_ylim(lo, hi)
        ax.set_title(f"{name}: block {layer}", fontsize=9)
        ax.set_xlabel("batch")
    axes[0].set_ylabel("activation")
    fig.colorbar(im, ax=list(axes), label="log(1 + count)")
    return save_figure(fig, save)


def compare_dead(stats: Sequence, names: Sequence[str],
                 save: str | Path | None = None) -> Figure:
    """Each run's % near zero per layer over training, one panel per run, one y scale."""
    panels = [(s, n) for s, n in zip(stats, names, strict=True) if s is not None and s.batches]
    # constrained layout makes room beside the panels for a legend they share
    fig = Figure(figsize=(4 * max(len(panels), 1) + 1, 3.4), layout="constrained")
    if not panels:
        return save_figure(fig, save)
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, (s, name) in zip(axes, panels, strict=True):
        for i, layer in enumerate(s.layer_names):
            # a run with a batch or two recorded: points, or a line of one point shows nothing
            ax.plot(s.batches, 100 * s.near_zero(i).numpy(), label=f"block {layer}",
                    marker="o" if len(s.batches) < 3 else None)
        ax.set_ylim(-3, 103)
        if len(s.batches) == 1:  # one recorded batch: an axis around it, not +-0.04
            ax.set_xlim(s.batches[0] - 1, s.batches[0] + 1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("batch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% near zero")
    if all(s.layer_names == panels[0][0].layer_names for s, _ in panels):
        # the same blocks in the same colours in every panel: one legend explains them all
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper",
                   fontsize=7)
    else:  # a colour is a different block from one run to another: a legend on each
        for ax in axes:
            ax.legend(fontsize=7)
    return save_figure(fig, save)


def show_results(images: Tensor, titles: Sequence[tuple[str, str]],
                 save: str | Path | None = None) -> Figure:
    """Images (N, C, H, W uint8) in a grid, each titled target/prediction, a wrong
    prediction in red."""
    n = len(images)
    cols = min(n, 5)
    rows = max(1, -(-n // cols))
    fig = Figure(figsize=(2 * cols, 2.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax in axes:
        ax.axis("off")
    for ax, img, (target, pred) in zip(axes, images, titles, strict=False):
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(img.permute(1, 2, 0).numpy())
        ax.set_title(f"{target}/{pred}", fontsize=10, color="black" if target == pred else "red")
    fig.suptitle("target/prediction (wrong in red)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, save)
