"""Plots: the only module that imports matplotlib. Every function returns its figure and can
save it as a PNG; none touches pyplot's global state, so they are safe in scripts and threads.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from torch import Tensor

from convscope.data import atomic_write_bytes


def save_figure(fig: Figure, path: str | Path | None, dpi: int = 100) -> Figure:
    """Write `fig` to `path` as PNG, atomically; a None path does nothing."""
    if path is not None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        atomic_write_bytes(path, buf.getvalue())
    return fig


def show_images(images: Tensor, labels: Sequence[str] | None = None,
                save: str | Path | None = None, ncols: int | None = None) -> Figure:
    """A grid of uint8 images (N, C, H, W), C = 1 or 3, each titled with its label."""
    n = len(images)
    if n == 0:
        raise ValueError("No images to show: received an empty batch.")
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
    ax.plot(steps, recorder.losses[skip_start:], alpha=0.3, label="train (per batch)")
    ax.plot(steps, recorder.smooth_losses[skip_start:], label="train (smoothed)")
    if with_valid and recorder.values:
        per_epoch = len(recorder.losses) / len(recorder.values)
        ends = [round(per_epoch * (i + 1)) for i in range(len(recorder.values))]
        ax.plot(ends, [v["valid_loss"] for v in recorder.values], "o-", label="valid")
    ax.set_xlabel("batch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, save)


def plot_sched(recorder, save: str | Path | None = None) -> Figure:
    """Learning rate and momentum (Adam's beta1) of the first param group, per batch."""
    fig = Figure(figsize=(9, 3.5))
    axes = fig.subplots(1, 2)
    labels = ("learning rate", "momentum / beta1")
    for ax, name, label in zip(axes, ("lr", "mom"), labels, strict=True):
        ax.plot([groups[0] for groups in recorder.hps[name]])
        ax.set_xlabel("batch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, save)
