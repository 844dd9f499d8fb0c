"""lr_find: sweep the learning rate over a few batches and read a good one off the curve.

Leslie Smith's learning rate range test, as fastai runs it: the lr grows exponentially from
`start_lr` to `end_lr`, one step per batch, until the smoothed loss passes `stop_div` times its
best. The sweep leaves no trace: weights, batchnorm statistics, optimizer state, random states
and counters are restored from memory afterwards, and the callbacks that observe a fit sit it
out. The result holds the curve, the suggestions and a `plot()`; when the curve has no descent
(a model already trained, say) it says so instead of suggesting the start of the sweep.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

from convscope.callback import Callback, CancelEpochException, CancelFitException
from convscope.errors import UsageError


class LRFinder(Callback):
    """The sweep behind `lr_find`: the lr grows exponentially from `start_lr` to `end_lr`
    over `num_it` batches; stops early once the smoothed loss passes `stop_div` times its
    best (or is NaN)."""

    order = 10

    def __init__(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100,
                 stop_div: float = 4.0, beta: float = 0.98) -> None:
        if not 0 < start_lr < end_lr:
            raise UsageError(f"Expected 0 < start_lr < end_lr. Received: start_lr={start_lr}, "
                             f"end_lr={end_lr}.")
        if num_it < 2:
            raise UsageError(f"num_it must be >= 2. Received: num_it={num_it}.")
        self.start_lr, self.end_lr, self.num_it = start_lr, end_lr, num_it
        self.stop_div, self.beta = stop_div, beta
        self.lrs: list[float] = []
        self.losses: list[float] = []

    def before_fit(self) -> None:
        self.lrs, self.losses, self._avg, self._best = [], [], 0.0, math.inf

    def before_batch(self) -> None:
        if not self.learn.training:
            raise CancelEpochException  # no validation during the sweep
        step = self.learn.train_iter
        lr = self.start_lr * (self.end_lr / self.start_lr) ** (step / (self.num_it - 1))
        for group in self.learn.opt.param_groups:
            group["lr"] = lr

    def after_batch(self) -> None:
        if not self.learn.training:
            return
        loss = float(self.learn.loss.detach())  # a short sweep: reading every batch is fine
        self._avg = self.beta * self._avg + (1 - self.beta) * loss
        smooth = self._avg / (1 - self.beta ** (len(self.losses) + 1))
        self.lrs.append(self.learn.opt.param_groups[0]["lr"])
        self.losses.append(smooth)
        self._best = min(self._best, smooth)
        if (not math.isfinite(smooth) or smooth > self.stop_div * self._best
                or len(self.losses) >= self.num_it):
            raise CancelFitException


@dataclass(frozen=True)
class SuggestedLRs:
    """Learning rates read off an lr_find curve.

    valley: two thirds of the way (in steps) down the descent, from the last highest loss
        before the minimum to the minimum; steep: where the loss falls fastest; minimum: a
        tenth of the lr at the lowest loss (the minimum itself is already too high), None
        when the loss was still falling at the sweep's end (then it has no minimum yet).
    """

    valley: float
    steep: float
    minimum: float | None


def suggest_lrs(lrs: list[float], losses: list[float]) -> SuggestedLRs:
    """Suggestions from an lr_find sweep (smoothed losses)."""
    pairs = [(lr, loss) for lr, loss in zip(lrs, losses, strict=True) if math.isfinite(loss)]
    if len(pairs) < 3:
        raise UsageError(f"lr_find needs at least 3 finite losses to suggest a learning rate; "
                         f"it got {len(pairs)}. Lower start_lr or use more data.")
    lrs, losses = [p[0] for p in pairs], [p[1] for p in pairs]
    n = len(losses)
    # the descent: from the last highest point before the minimum down to the minimum
    end = min(range(n), key=losses.__getitem__)
    peak = max(losses[: end + 1])
    start = max(i for i in range(end + 1) if losses[i] == peak)
    valley = lrs[start + (end - start) * 2 // 3]
    logs = [math.log(lr) for lr in lrs]
    slopes = [(losses[i + 1] - losses[i]) / (logs[i + 1] - logs[i]) for i in range(n - 1)]
    skip = max(1, n // 20) if n > 10 else 0  # the first smoothed values are mostly noise
    steep = lrs[min(range(skip, n - 1), key=slopes.__getitem__)]
    low = min(range(n), key=losses.__getitem__)
    minimum = lrs[low] / 10 if low < n - 1 else None  # the end of the sweep is no minimum
    return SuggestedLRs(valley=valley, steep=steep, minimum=minimum)


# A curve whose loss falls by less than MIN_DROP of its first value, or whose lowest point comes
# in the first EARLY share of the sweep, has no descent to read a learning rate from. Measured
# on MNIST (bench-free, 2 seeds): an untrained simple_cnn's curve is lowest at 96-98% of a
# 100-step sweep, 25-50% below its start; a trained one's at 0-14%, where a fall of up to 27%
# is batch noise at learning rates too small to change anything.
MIN_DROP, EARLY = 0.1, 1 / 3
# Fewer steps than this: the debiased smoothing (beta 0.98) spans most of the sweep, and the
# steepest point lands in its first, noisy steps (a 30-step sweep suggested 1.9e-07).
MIN_STEPS = 50


def never_turned_up(lrs: list[float], losses: list[float]) -> str | None:
    """What to know when the loss was still at its lowest at the sweep's last step: the
    valley and the steepest point stand, the minimum does not exist yet."""
    finite = [(lr, v) for lr, v in zip(lrs, losses, strict=True) if math.isfinite(v)]
    if not finite or min(range(len(finite)), key=lambda i: finite[i][1]) != len(finite) - 1:
        return None
    return (f"the loss was still falling at the sweep's end, lr {finite[-1][0]:.2g}: it never "
            f"turned up, so there is no minimum to suggest; sweep further with a larger end_lr "
            f"(--end-lr) to see where it does")


def why_unreliable(lrs: list[float], losses: list[float]) -> str | None:
    """Why no learning rate can be read off this curve, or None when one can.

    >>> why_unreliable([1e-3, 1e-2, 1e-1, 1.0], [1.0, 0.5, 0.2, 3.0]) is None
    True
    >>> print(why_unreliable([1e-3, 1e-2, 1e-1, 1.0], [0.05, 0.049, 0.06, 0.4]))
    the loss fell by only 2% over the sweep (0.05 -> 0.049), ...
    >>> print(why_unreliable([1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10], [0.1, 0.07, 0.08, 0.1, 0.2, 1]))
    the loss was lowest early in the sweep (lr 0.001, step 2 of 6) ...
    """
    finite = [(lr, v) for lr, v in zip(lrs, losses, strict=True) if math.isfinite(v)]
    if len(finite) < 3:
        return (f"only {len(finite)} finite losses were recorded; lower start_lr or use more "
                f"data")
    values = [v for _, v in finite]
    low = min(range(len(values)), key=values.__getitem__)
    drop = (values[0] - values[low]) / values[0] if values[0] > 0 else 0.0
    if drop < MIN_DROP:
        return (f"the loss fell by only {drop:.0%} over the sweep ({values[0]:.3g} -> "
                f"{values[low]:.3g}), so there is no descent to read a learning rate from: the "
                f"model is probably trained already (run lr_find before training) or start_lr "
                f"is already too high")
    if low < EARLY * len(values):
        return (f"the loss was lowest early in the sweep (lr {finite[low][0]:.2g}, step "
                f"{low + 1} of {len(values)}) and only rose after, so its fall is batch noise "
                f"rather than a descent: the model is probably trained already (run lr_find "
                f"before training), or start_lr is too high")
    return None


@dataclass(frozen=True)
class LRFindResult:
    """What `lr_find` found: the curve, and suggestions when the curve allows them.

    `valley`, `steep` and `minimum` are None when `reason` says why no learning rate can be
    read off the curve."""

    lrs: list[float] = field(repr=False)
    losses: list[float] = field(repr=False)
    suggestions: SuggestedLRs | None
    reason: str | None = None
    warning: str | None = None  # what to know of suggestions that stand (see never_turned_up)

    @property
    def reliable(self) -> bool:
        return self.suggestions is not None

    @property
    def valley(self) -> float | None:
        return self.suggestions.valley if self.suggestions else None

    @property
    def steep(self) -> float | None:
        return self.suggestions.steep if self.suggestions else None

    @property
    def minimum(self) -> float | None:
        return self.suggestions.minimum if self.suggestions else None

    def describe(self) -> str:
        """One line: the sweep, and the suggestions or why there are none."""
        sweep = (f"swept {len(self.lrs)} batches from lr {self.lrs[0]:.2g} to "
                 f"{self.lrs[-1]:.2g}")
        if self.suggestions is None:
            return f"{sweep}; no reliable suggestion: {self.reason}"
        s = self.suggestions
        minimum = f"minimum {s.minimum:.2g}" if s.minimum is not None else "no minimum"
        return (f"{sweep}; suggestions: valley {s.valley:.2g}, steep {s.steep:.2g}, {minimum}"
                + (f". Note: {self.warning}" if self.warning else ""))

    def __repr__(self) -> str:
        return f"LRFindResult: {self.describe()}"

    def _repr_html_(self) -> str:
        import base64
        import html

        from convscope.plots import png_bytes

        png = base64.b64encode(png_bytes(self.plot())).decode()
        return (f"<p>{html.escape(self.describe())}</p>"
                f'<img src="data:image/png;base64,{png}" alt="lr_find curve">')

    def plot(self, save: str | Path | None = None):
        """The curve with the suggestions marked, titled with why one is missing; returns
        the matplotlib Figure."""
        from convscope import plots

        # the first clause of the reason or warning: what is missing and why, in brief
        note = (f"no reliable suggestion: {self.reason.split(': ')[0]}" if self.reason
                else f"no minimum: {self.warning.split(': ')[0]}" if self.warning else "")
        return plots.plot_lr_find(self.lrs, self.losses, self.suggestions, save=save,
                                  note=note)


def lr_find(learn, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100,
            stop_div: float = 4.0) -> LRFindResult:
    """Sweep the learning rate exponentially from `start_lr` to `end_lr` over `num_it`
    training batches of `learn`, stopping once the smoothed loss passes `stop_div` times its
    best; `learn.lr_find(...)` calls this.

    Leaves no trace: weights, batchnorm statistics, optimizer state, counters and random
    states (torch's, Python's, NumPy's and the data order's) are restored afterwards, from
    memory, so no file can collide with another run. Callbacks that observe a fit (Recorder,
    progress display, checkpoints, ActivationStats, DivergenceGuard, schedules) sit out the
    sweep. Runs any number of times, before or after training.
    """
    from convscope.checkpoint import capture_rng, restore_rng

    finder = LRFinder(start_lr, end_lr, num_it, stop_div)
    saved_model = copy.deepcopy(learn.model.state_dict())
    saved_opt = copy.deepcopy(learn.opt.state_dict()) if learn.opt is not None else None
    saved_rng = capture_rng(learn.dls.train.generator.get_state())
    counters = ("epoch", "n_epoch", "iter", "n_iter", "train_iter", "total_iters")
    saved_counters = {name: getattr(learn, name) for name in counters}
    benched = [cb for cb in learn.cbs if not cb.run_in_lr_find]
    for cb in benched:
        learn.remove_cb(cb)
    try:
        epochs = -(-num_it // len(learn.dls.train))
        learn.fit(epochs, lr=start_lr, cbs=[finder])
    finally:
        learn.model.load_state_dict(saved_model)
        if saved_opt is not None:
            learn.opt.load_state_dict(saved_opt)
        else:
            learn.opt = None
        restore_rng(*saved_rng, learn.dls.train.generator)
        for name, value in saved_counters.items():
            setattr(learn, name, value)
        for cb in benched:
            learn.add_cb(cb)
    reason = why_unreliable(finder.lrs, finder.losses)
    diverged = len(finder.losses) < num_it  # stopped by the loss blowing up
    if not diverged and num_it < MIN_STEPS:  # what else it says rests on too few steps
        reason = (f"a sweep of {num_it} steps is too short to trust: the smoothed loss has "
                  f"barely settled before the rate has moved on; sweep {MIN_STEPS} steps or "
                  f"more (num_it, --num-it)")
    suggestions = suggest_lrs(finder.lrs, finder.losses) if reason is None else None
    warning = never_turned_up(finder.lrs, finder.losses) if suggestions is not None else None
    return LRFindResult(finder.lrs, finder.losses, suggestions, reason, warning)
