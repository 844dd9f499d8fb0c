"""Recorder: what happened during fit, batch by batch and epoch by epoch.

Per training batch it keeps the loss (raw and smoothed) and every param group's lr and
momentum; per epoch, the mean train loss, the valid loss and the metrics. Losses stay on the
device as tensors during an epoch and are read once at its end, so recording never makes the
loop wait for the device.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from convscope.callback import Callback
from convscope.callbacks.schedule import get_hyper
from convscope.errors import UsageError
from convscope.metrics import metric_name


@dataclass
class History:
    """What a Recorder recorded, as plain lists: saved as JSON in a run folder."""

    losses: list[float] = field(default_factory=list)
    smooth_losses: list[float] = field(default_factory=list)
    hps: dict[str, list[list[float]]] = field(default_factory=dict)
    values: list[dict[str, float]] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # n_train, n_valid, n_classes: what was judged
    # the number of training batches recorded by the end of each epoch (epochs may differ in
    # length: a callback may shorten some)
    epoch_ends: list[int] = field(default_factory=list)
    # where the training set changed: {"batch": first batch on the new set, "epoch": its
    # epoch, "images": how many it draws, "of": how many the loader holds}
    marks: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.epoch_ends and self.values:  # written before epoch ends were recorded
            self.epoch_ends = even_ends(len(self.losses), len(self.values))

    def save(self, path: str | Path) -> None:
        from convscope.files import atomic_write_bytes

        # NaN and inf are kept (as JSON's NaN/Infinity) since a diverged loss is the point
        atomic_write_bytes(path, json.dumps(self.__dict__).encode())

    @classmethod
    def load(cls, path: str | Path) -> History:
        try:
            raw = json.loads(Path(path).read_text())
            return cls(**{k: raw[k] for k in ("losses", "smooth_losses", "hps", "values")},
                       meta=raw.get("meta", {}), epoch_ends=raw.get("epoch_ends", []),
                       marks=raw.get("marks", []))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{path}: cannot be read as a training history: {e}") from None


def describe_optimizer(opt) -> str:
    """'AdamW (betas 0.9/0.99, eps 1e-05, weight decay 0.01)': the optimizer a fit used."""
    if opt is None:
        return "none"
    d = opt.defaults
    parts = []
    if "betas" in d:
        parts.append(f"betas {d['betas'][0]:g}/{d['betas'][1]:g}")
    if "momentum" in d:
        parts.append(f"momentum {d['momentum']:g}")
    if "eps" in d:
        parts.append(f"eps {d['eps']:g}")
    if "weight_decay" in d:
        parts.append(f"weight decay {d['weight_decay']:g}")
    return f"{type(opt).__name__} ({', '.join(parts)})" if parts else type(opt).__name__


def _drawn(dl) -> str | None:
    """A fingerprint of which images an epoch of `dl` draws (None: every image)."""
    if dl.indices is None:
        return None
    import hashlib

    return hashlib.sha1(dl.indices.numpy().tobytes()).hexdigest()


def even_ends(n_batches: int, n_epochs: int) -> list[int]:
    """Epoch ends for a history written before they were recorded (every epoch then had as
    many batches)."""
    return [round(n_batches * (i + 1) / n_epochs) for i in range(n_epochs)]


class EpochTable(list):
    """One dict per epoch (epoch, train_loss, valid_loss, metrics, time): a list that reads as
    a table with sensible precision, in a terminal and in a notebook."""

    def __repr__(self) -> str:
        from convscope.display import table_text

        return table_text(self) if self else "(no epoch yet)"

    def _repr_html_(self) -> str:
        from convscope.display import table_html

        return table_html(self)


class Recorder(Callback):
    """Reached as `learn.recorder`.

    Attributes (filled by fit):
        losses: train loss of every batch. smooth_losses: its debiased exponential average.
        hps: {"lr": [[group0, group1, ...] per batch], "mom": [...]}.
        values: one dict per epoch: epoch, train_loss, valid_loss, each metric, time (s).
        epoch_ends: how many training batches were recorded by the end of each epoch.
    """

    order = 50
    run_in_lr_find = False

    def __init__(self, beta: float = 0.98) -> None:
        self.beta = beta
        self.losses: list[float] = []
        self.smooth_losses: list[float] = []
        self.hps: dict[str, list[list[float]]] = {"lr": [], "mom": []}
        self.values: list[dict[str, float]] = EpochTable()
        self.epoch_ends: list[int] = []
        self.marks: list[dict] = []
        self._selection: str | None = None  # which images the last epoch drew (see _drawn)

    @property
    def metric_names(self) -> list[str]:
        return [metric_name(m) for m in self.learn.metrics]

    def before_fit(self) -> None:
        dls = self.learn.dls
        self.meta = {"n_train": len(dls.train.y), "n_valid": len(dls.valid.y),
                     "n_classes": dls.c, "optimizer": describe_optimizer(self.learn.opt),
                     "callbacks": {cb.name: cb.describe() for cb in self.learn.cbs
                                   if callable(getattr(cb, "describe", None))}}
        self.losses, self.smooth_losses, self.values = [], [], EpochTable()
        self.hps, self.epoch_ends, self.marks = {"lr": [], "mom": []}, [], []
        self._selection = None
        self._avg: Tensor | None = None
        self._count = 0

    def before_epoch(self) -> None:
        self._start = time.perf_counter()
        self._raw: list[Tensor] = []
        self._smooth: list[Tensor] = []
        partial = getattr(self, "_resumed_partial", None)
        if partial is not None:  # a resumed epoch: the batches before the checkpoint count too
            dev = self.learn.dls.device
            self._raw = [torch.tensor(v, device=dev) for v in partial[0]]
            self._smooth = [torch.tensor(v, device=dev) for v in partial[1]]
            self._resumed_partial = None
        self._vcount = 0  # stays 0 if the epoch is cancelled before validation

    def before_train(self) -> None:
        # every callback's before_epoch has run: the loader stands as this epoch draws it
        dl = self.learn.dls.train
        drawn = _drawn(dl)
        if drawn != self._selection:
            self.marks.append({"batch": len(self.losses) + len(self._raw),
                               "epoch": self.learn.epoch, "images": dl.n_images,
                               "of": len(dl.y)})
        self._selection = drawn

    def before_validate(self) -> None:
        self._vsum = torch.zeros(1 + len(self.learn.metrics), device=self.learn.dls.device)
        self._vcount = 0

    def after_loss(self) -> None:
        learn = self.learn
        if learn.training:
            loss = learn.loss.detach().float()
            self._avg = loss * (1 - self.beta) if self._avg is None else torch.lerp(
                self._avg, loss, 1 - self.beta)
            self._count += 1
            self._raw.append(loss)
            self._smooth.append(self._avg / (1 - self.beta ** self._count))
            for name, per_batch in self.hps.items():
                per_batch.append([get_hyper(g, name) for g in learn.opt.param_groups])
        else:
            bs = len(learn.yb)
            batch = [learn.loss.float()] + [m(learn.pred, learn.yb).float() for m in learn.metrics]
            self._vsum += torch.stack(batch) * bs
            self._vcount += bs

    def reduce_valid(self, all_reduce) -> None:
        """Sum this epoch's valid totals over processes with `all_reduce` (in place), so each
        holds the metrics of the whole valid set (used by the Distributed callback)."""
        count = torch.tensor([float(self._vcount)], device=self._vsum.device)
        all_reduce(self._vsum)
        all_reduce(count)
        self._vcount = int(count.item())

    @property
    def smooth_loss(self) -> float:
        """The latest smoothed train loss (reads the device: call it sparingly)."""
        return float(self._smooth[-1]) if getattr(self, "_smooth", None) else float("nan")

    def after_epoch(self) -> None:
        raw = torch.stack(self._raw).tolist() if self._raw else []
        self.losses += raw
        self.smooth_losses += torch.stack(self._smooth).tolist() if self._smooth else []
        nan = [float("nan")] * (1 + len(self.learn.metrics))
        valid = (self._vsum / self._vcount).tolist() if self._vcount else nan
        row = {"epoch": self.learn.epoch,
               "train_loss": sum(raw) / len(raw) if raw else float("nan"),
               "valid_loss": valid[0]}
        row.update(zip(self.metric_names, valid[1:], strict=True))
        row["time"] = time.perf_counter() - self._start
        self.values.append(row)
        self.epoch_ends.append(len(self.losses))
        # moved into the history: an epoch-end checkpoint must not carry them as the partial
        # epoch too, or a resume from it would count this epoch's losses twice
        self._raw, self._smooth = [], []

    def history(self) -> History:
        """A copy of what was recorded, detached from the learner."""
        return History(list(self.losses), list(self.smooth_losses),
                       {k: [list(g) for g in v] for k, v in self.hps.items()},
                       [dict(v) for v in self.values], dict(getattr(self, "meta", {})),
                       list(self.epoch_ends), [dict(m) for m in self.marks])

    def state_dict(self) -> dict:
        """Everything recorded so far, the current epoch's batches included, as plain lists
        (for checkpoints; reads the device once)."""
        raw = torch.stack(self._raw).tolist() if getattr(self, "_raw", None) else []
        smooth = torch.stack(self._smooth).tolist() if getattr(self, "_smooth", None) else []
        avg = getattr(self, "_avg", None)
        return {"history": self.history().__dict__, "partial": [raw, smooth],
                "avg": None if avg is None else float(avg), "count": getattr(self, "_count", 0),
                "selection": self._selection}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned (called after before_fit, when resuming)."""
        h = state["history"]
        self.losses, self.smooth_losses = list(h["losses"]), list(h["smooth_losses"])
        self.hps, self.values = h["hps"], EpochTable(h["values"])
        restored = History(**h)  # fills in what an older checkpoint lacks
        self.epoch_ends, self.marks = restored.epoch_ends, restored.marks
        self._selection = state.get("selection")
        # what this fit's before_fit recorded, where the checkpoint does not say
        self.meta = {**getattr(self, "meta", {}), **dict(h.get("meta", {}))}
        dev = self.learn.dls.device
        self._avg = None if state["avg"] is None else torch.tensor(state["avg"], device=dev)
        self._count = state["count"]
        self._resumed_partial = state["partial"] if state["partial"][0] else None

    def __repr__(self) -> str:
        return (f"Recorder: {len(self.losses)} training batches, {len(self.values)} epochs\n"
                + repr(self.values))

    def _repr_html_(self) -> str:
        return (f"<p>Recorder: {len(self.losses)} training batches, {len(self.values)} "
                f"epochs</p>" + self.values._repr_html_())

    def plot_loss(self, skip_start: int = 5, with_valid: bool = True,
                  save: str | Path | None = None):
        """Train loss per batch (raw and smoothed) and valid loss per epoch; returns the figure."""
        from convscope import plots

        return plots.plot_loss(self, skip_start=skip_start, with_valid=with_valid, save=save)

    def plot_sched(self, save: str | Path | None = None):
        """Learning rate and momentum per batch; returns the figure."""
        from convscope import plots

        return plots.plot_sched(self, save=save)
