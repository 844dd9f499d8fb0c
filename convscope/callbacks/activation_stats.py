"""ActivationStats: what each layer's activations look like, batch by batch, cheaply.

For every hooked layer and every recorded training batch it keeps the mean, the std, the share
of activations near zero (|x| <= `zero_thresh`) and a histogram. This is the data behind the
book's `plot_layer_stats` and `color_dim`; plots.py draws it and diagnose.py judges it.

Cheap enough to leave on:
- Statistics are estimated from a systematic sample of `sample` activations per layer per
  batch (8,192 by default: the standard error of a share is under 0.6 percentage points):
  every s-th value in memory, with s coprime to the values per image so the sample cycles
  through channels and positions instead of landing on one (s = 1 for a layer with fewer
  values than `sample`, which then has each value once or more). The sample goes round the
  layer's values from a random start, so every value is equally likely to be in it; the starts
  come from a generator of its own, so training's randomness is untouched; a strided slice
  costs one copy, not a random index per value. All layers are summarised at once.
  `sample=None` uses every activation (exact, but on a CPU that costs about half as much again
  as the training step itself).
- Everything is computed on the model's device and written into preallocated tensors there;
  they are copied to the CPU in one go at the end of each epoch, never synced per batch.
- Memory: per hooked layer and recorded batch, 3 + `bins` float32 values: with 40 bins,
  172 bytes, so 1,000 batches of a 5-layer model take 860 KB. `every=N` records one batch in N.

Histograms never drop values: each layer's range is fixed at its first recorded batch to
[0, hist_max] when that batch has no negative activations (a ReLU's output), else to
[-hist_max, hist_max]; values outside the range are counted in the end bins.

By default hooks sit on the output of each conv block (after its ReLU, where there is one), so
"near zero" reads as "dead ReLU". Validation batches are not recorded. Hooks are removed when
fit ends, also when it is cancelled or raises.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from convscope.callback import Callback
from convscope.errors import UsageError

FORMAT = "convscope.activation_stats/1"


def conv_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The default modules to hook: each conv block (a Sequential holding a conv as a direct
    child); for a model without such blocks, every ReLU; failing that, every conv."""
    blocks = [(n, m) for n, m in model.named_modules() if n and isinstance(m, nn.Sequential)
              and any(isinstance(c, nn.modules.conv._ConvNd) for c in m.children())]
    if blocks:
        return blocks
    relus = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    return relus or [(n, m) for n, m in model.named_modules()
                     if isinstance(m, nn.modules.conv._ConvNd)]


def layer_index(names: list[str], idx: int | str) -> int:
    """The position of a recorded layer given by name or index, or a UsageError."""
    if isinstance(idx, str):
        if idx not in names:
            raise UsageError(f"No recorded layer {idx!r}. Recorded: {names}.")
        return names.index(idx)
    if not -len(names) <= idx < len(names):
        raise UsageError(f"Layer index out of range. Received: {idx}; {len(names)} layers "
                         f"were recorded.")
    return idx


def _flat(x: Tensor) -> Tensor:
    """All values of x as a 1-d view when its memory allows (NCHW or channels_last)."""
    if x.is_contiguous():
        return x.view(-1)
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(-1)  # a view: the NHWC order is contiguous
    return x.reshape(-1)


class ActivationStats(Callback):
    """Reached as `learn.activation_stats`.

    Args:
        modules: the modules to hook; default: each conv block (see `conv_blocks`).
        filter: alternatively, a predicate (name, module) -> bool choosing modules to hook.
        every: record one training batch in `every`.
        bins: histogram bins.
        hist_max: the histogram's range bound (see the module docstring).
        zero_thresh: |x| <= zero_thresh counts as near zero.
        sample: activations sampled per layer and batch; None for all of them.
        seed: seeds the sampling generator.

    After fit: `layer_names`, `batches` (the training-batch index of each record), and per
    layer `stats[i]` (records, 3) = mean, std, near-zero share, `hists[i]` (records, bins)
    counts, `ranges[i]` = (lo, hi).
    """

    order = 40
    run_in_lr_find = False

    def __init__(self, modules: list[nn.Module] | None = None,
                 filter: Callable[[str, nn.Module], bool] | None = None, every: int = 1,
                 bins: int = 40, hist_max: float = 10.0, zero_thresh: float = 0.05,
                 sample: int | None = 8192, seed: int = 0) -> None:
        if every < 1 or bins < 2 or hist_max <= 0 or zero_thresh < 0:
            raise UsageError(f"Expected every >= 1, bins >= 2, hist_max > 0, zero_thresh >= 0."
                             f" Received: every={every}, bins={bins}, hist_max={hist_max}, "
                             f"zero_thresh={zero_thresh}.")
        self.modules, self.filter = modules, filter
        self.every, self.bins, self.hist_max = every, bins, hist_max
        self.zero_thresh, self.sample, self.seed = zero_thresh, sample, seed
        self.layer_names: list[str] = []
        self.batches: list[int] = []
        self.stats: list[Tensor] = []
        self.hists: list[Tensor] = []
        self.ranges: list[tuple[float, float]] = []
        self._handles: list = []

    # --- hooking ---------------------------------------------------------------------------
    def _targets(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        names = {m: n for n, m in model.named_modules()}
        if self.modules is not None:
            missing = [m for m in self.modules if m not in names]
            if missing:
                raise UsageError(f"ActivationStats got {len(missing)} module(s) that are not "
                                 f"part of the model, e.g. {missing[0]!r}.")
            return [(names[m], m) for m in self.modules]
        if self.filter is not None:
            chosen = [(n, m) for n, m in model.named_modules() if n and self.filter(n, m)]
            if not chosen:
                raise UsageError("ActivationStats' filter chose no module. Named modules: "
                                 f"{[n for n, _ in model.named_modules() if n][:20]}.")
            return chosen
        return conv_blocks(model)

    def before_fit(self) -> None:
        learn = self.learn
        targets = self._targets(learn.model)
        self.layer_names = [n for n, _ in targets]
        device = learn.dls.device
        capacity = -(-learn.total_iters // self.every)  # ceil
        n = len(targets)
        self._stats = torch.zeros(n, capacity, 3, device=device)
        self._hists = torch.zeros(n, capacity, self.bins, device=device)
        # per layer: histogram lower bound and bins per unit, set on the first recorded batch
        self._lo = torch.zeros(n, 1, device=device)
        self._scale = torch.zeros(n, 1, device=device)
        self._ranges: list[tuple[float, float] | None] = [None] * n
        self._offsets = torch.arange(n, device=device).view(n, 1) * (self.bins + 1)
        if self.sample is not None:
            self._buf = torch.zeros(n, self.sample, device=device)
        self._gen = torch.Generator().manual_seed(self.seed)  # the samples' random starts
        self._count = 0
        self._pending = False
        self.batches, self.stats, self.hists, self.ranges = [], [], [], []
        self._handles = [m.register_forward_hook(self._hook(i)) for i, (_, m) in
                         enumerate(targets)]

    def _recording(self) -> bool:
        learn = self.learn
        return learn.training and learn.train_iter % self.every == 0

    def before_batch(self) -> None:
        self._pending = self._recording()

    def _hook(self, i: int):
        def hook(module: nn.Module, inputs, output) -> None:
            if not self._pending:
                return
            x = output[0] if isinstance(output, tuple) else output
            with torch.no_grad():
                flat = _flat(x.detach())
                if self.sample is None:  # exact: every value, one layer at a time
                    self._summarise(flat.float().unsqueeze(0), [i])
                else:  # a systematic sample into this layer's buffer row
                    self._sample_into(self._buf[i], flat, x.shape[0] if x.ndim else 1)
        return hook

    def _sample_into(self, row: Tensor, flat: Tensor, n_images: int) -> None:
        """Every s-th value of flat, going round it from a random start, into row (see the
        module docstring): each value has the same chance, len(row) / flat.numel(), to be in it.
        """
        size, n = flat.numel(), self.sample
        start = int(torch.randint(size, (1,), generator=self._gen))
        if size < n:  # every value once or more, from the start round
            row.copy_(flat.repeat(-(-(start + n) // size))[start:start + n])
            return
        step, per_image = size // n, max(size // max(n_images, 1), 1)
        while math.gcd(step, per_image) != 1:
            step -= 1
        first = min(n, -(-(size - start) // step))  # positions before the end
        row[:first].copy_(flat[start:start + step * first:step])
        if first < n:
            rest = start + step * first - size
            row[first:].copy_(flat[rest:rest + step * (n - first):step])

    def _summarise(self, v: Tensor, layers: list[int] | slice) -> None:
        """Statistics of values v (n_layers, S) into this batch's row, all layers at once.

        `layers` is a slice when every layer is summarised together (the sampled path), so
        that the per-layer tensors are read and written as views, not gathered."""
        ids = range(len(self.layer_names))[layers] if isinstance(layers, slice) else layers
        if any(self._ranges[i] is None for i in ids):  # one sync, on the first batch only
            negative = (v < 0).any(dim=1).tolist()
            for i, neg in zip(ids, negative, strict=True):
                if self._ranges[i] is None:
                    lo = -self.hist_max if neg else 0.0
                    self._ranges[i] = (lo, self.hist_max)
                    self._lo[i] = lo
                    self._scale[i] = self.bins / (self.hist_max - lo)
        row, n = self._count, len(ids)
        mean = v.mean(dim=1, keepdim=True)  # two passes: var_mean is far slower on a CPU
        std = (v - mean).square_().mean(dim=1).sqrt_()
        near = (v.abs() <= self.zero_thresh).float().mean(dim=1)
        self._stats[layers, row] = torch.stack([mean.squeeze(1), std, near], dim=1)
        bins = ((v - self._lo[layers]) * self._scale[layers]).clamp_(0, self.bins - 1)
        # +-inf land in the end bins; NaN belongs in none: counted in an extra bin, dropped
        bins = bins.nan_to_num_(nan=self.bins).long() + self._offsets[:n]
        counts = torch.bincount(bins.view(-1), minlength=n * (self.bins + 1))
        self._hists[layers, row] = counts.view(n, self.bins + 1)[:, :self.bins].float()

    def after_pred(self) -> None:
        # the hooks have run by now: count the batch here, not in after_batch, which a
        # CancelFitException or an error later in the batch would skip
        if self._pending:
            if self.sample is not None:
                self._summarise(self._buf, slice(None))
            self.batches.append(self.learn.train_iter)
            self._count += 1
            self._pending = False

    def after_epoch(self) -> None:
        self._collect()

    def after_fit(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        if hasattr(self, "_stats"):
            self._collect()

    def _collect(self) -> None:
        """Copy what was recorded to the CPU, in one transfer per tensor."""
        n = self._count
        stats, hists = self._stats[:, :n].cpu(), self._hists[:, :n].cpu()
        self.stats = list(stats.unbind(0))
        self.hists = list(hists.unbind(0))
        self.ranges = [r if r is not None else (0.0, self.hist_max) for r in self._ranges]

    # --- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict | None:
        """What was recorded so far, the sampling generator and the histogram ranges: a fit
        resumed from a checkpoint then ends with the records an uninterrupted one has, tensor
        for tensor. Reads the device once (at a checkpoint, not per batch)."""
        if self._handles:  # during a fit: the records live in the preallocated buffers
            n = self._count
            return {"layer_names": list(self.layer_names), "batches": list(self.batches),
                    "ranges": list(self._ranges), "stats": self._stats[:, :n].cpu(),
                    "hists": self._hists[:, :n].cpu(), "generator": self._gen.get_state()}
        if not self.layer_names:
            return None
        return {"layer_names": list(self.layer_names), "batches": list(self.batches),
                "ranges": [list(r) for r in self.ranges],
                "stats": torch.stack(self.stats) if self.stats else torch.zeros(0, 0, 3),
                "hists": torch.stack(self.hists) if self.hists else torch.zeros(0, 0, self.bins)}

    def load_state_dict(self, state: dict) -> None:
        names, batches = list(state["layer_names"]), list(state["batches"])
        stats, hists = state["stats"], state["hists"]
        ranges = [None if r is None else (float(r[0]), float(r[1])) for r in state["ranges"]]
        if not self._handles:  # outside a fit (learn.load): the records, to read and plot
            self.layer_names, self.batches = names, batches
            self.stats, self.hists = list(stats.unbind(0)), list(hists.unbind(0))
            self.ranges = [r if r is not None else (0.0, self.hist_max) for r in ranges]
            return
        if names != self.layer_names or hists.shape[-1] != self.bins:
            raise UsageError(f"The checkpoint's activation statistics are of layers "
                             f"{names} with {hists.shape[-1]} bins; this fit records "
                             f"{self.layer_names} with {self.bins}. Resume with the same model "
                             f"and ActivationStats settings.")
        n = len(batches)
        if n > self._stats.shape[1]:
            raise UsageError(f"The checkpoint holds {n} recorded batches, more than this fit "
                             f"records ({self._stats.shape[1]}): resume with the same length.")
        self._stats[:, :n] = stats.to(self._stats.device)
        self._hists[:, :n] = hists.to(self._hists.device)
        self._count, self.batches = n, batches
        for i, r in enumerate(ranges):
            self._ranges[i] = r
            if r is not None:
                self._lo[i] = r[0]
                self._scale[i] = self.bins / (r[1] - r[0])
        if "generator" in state:
            self._gen.set_state(state["generator"])
        self._collect()

    # --- reading ---------------------------------------------------------------------------
    def _layer(self, idx: int | str) -> int:
        return layer_index(self.layer_names, idx)

    def means(self, idx: int | str) -> Tensor:
        return self.stats[self._layer(idx)][:, 0]

    def stds(self, idx: int | str) -> Tensor:
        return self.stats[self._layer(idx)][:, 1]

    def near_zero(self, idx: int | str) -> Tensor:
        """Share of activations with |x| <= zero_thresh, per recorded batch."""
        return self.stats[self._layer(idx)][:, 2]

    def hist(self, idx: int | str) -> Tensor:
        """(records, bins) histogram counts of a layer."""
        return self.hists[self._layer(idx)]

    def plot_layer_stats(self, idx: int | str, save: str | Path | None = None):
        """Mean, std and % near zero of layer `idx` against batch number; returns the figure."""
        from convscope import plots

        return plots.plot_layer_stats(self, idx, save=save)

    def color_dim(self, idx: int | str, save: str | Path | None = None):
        """The layer's histograms over training as an image (log counts); returns the figure."""
        from convscope import plots

        recorder = getattr(getattr(self, "learn", None), "recorder", None)
        return plots.color_dim(self, idx, recorder=recorder, save=save)

    def dead_chart(self, save: str | Path | None = None):
        """% near zero of every layer over training; returns the figure."""
        from convscope import plots

        return plots.dead_chart(self, save=save)

    # --- saving ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the recorded data as safetensors (no pickle), atomically."""
        from safetensors.torch import save

        from convscope.files import atomic_write_bytes

        tensors = {"batches": torch.tensor(self.batches, dtype=torch.int64)}
        for i in range(len(self.layer_names)):
            tensors[f"stats.{i}"] = self.stats[i].contiguous()
            tensors[f"hists.{i}"] = self.hists[i].contiguous()
        meta = {"format": FORMAT, "layer_names": json.dumps(self.layer_names),
                "ranges": json.dumps(self.ranges), "every": str(self.every),
                "bins": str(self.bins), "zero_thresh": str(self.zero_thresh),
                "sample": json.dumps(self.sample), "hist_max": str(self.hist_max)}
        atomic_write_bytes(path, save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> ActivationStats:
        """Read data written by `save` (for plots and diagnosis without a learner)."""
        from convscope.files import read_safetensors

        tensors, meta = read_safetensors(path, FORMAT, "an ActivationStats file")
        obj = cls(every=int(meta["every"]), bins=int(meta["bins"]),
                  hist_max=float(meta["hist_max"]), zero_thresh=float(meta["zero_thresh"]),
                  sample=json.loads(meta["sample"]))
        obj.layer_names = json.loads(meta["layer_names"])
        obj.ranges = [tuple(r) for r in json.loads(meta["ranges"])]
        obj.batches = tensors["batches"].tolist()
        obj.stats = [tensors[f"stats.{i}"] for i in range(len(obj.layer_names))]
        obj.hists = [tensors[f"hists.{i}"] for i in range(len(obj.layer_names))]
        return obj
