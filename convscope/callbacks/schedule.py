"""Hyperparameter schedules, set on every param group before each training batch.

`LRFinder` and `suggest_lrs` are the learning rate finder: an exponential sweep of the lr
over a few batches, and the rates read off the loss curve it draws.

`one_cycle` is Leslie Smith's 1cycle as fastai runs it: a cosine warmup from lr_max/div to
lr_max, then cosine annealing to lr_max/div_final, with momentum moving the opposite way so
that the noisy high-lr phase gets less momentum. Step positions follow torch's OneCycleLR (the
peak lands on step `pct_start * total - 1` and the final value on the last step), so the two
agree exactly and the tests can use torch as the oracle.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from convscope.learner import Callback, CancelEpochException, CancelFitException

Schedule = Callable[[int, int], float]  # (step, total_steps) -> value


def get_hyper(group: dict, name: str) -> float:
    """Read hyperparameter `name` of a param group; "mom" is SGD's momentum or Adam's beta1."""
    if name == "mom":
        return group["betas"][0] if "betas" in group else group.get("momentum", 0.0)
    return group[name]


def set_hyper(group: dict, name: str, value: float) -> None:
    """Write hyperparameter `name` of a param group (see `get_hyper`)."""
    if name != "mom":
        group[name] = value
    elif "betas" in group:
        group["betas"] = (value, *group["betas"][1:])
    elif "momentum" in group:
        group["momentum"] = value


def cos_anneal(start: float, end: float, pct: float) -> float:
    """Cosine from `start` (pct=0) to `end` (pct=1)."""
    return end + (start - end) / 2 * (1 + math.cos(math.pi * pct))


def one_cycle(start: float, middle: float, end: float, pct_start: float) -> Schedule:
    """Cosine from start to middle over the first pct_start of the steps, then to end.

    >>> f = one_cycle(1.0, 10.0, 0.0, pct_start=0.6)  # 5 steps: the peak is step 0.6*5-1 = 2
    >>> [round(f(step, 5), 3) for step in range(5)]
    [1.0, 5.5, 10.0, 5.0, 0.0]
    """
    if not 0 < pct_start <= 1:
        raise ValueError(f"pct_start must be in (0, 1]. Received: pct_start={pct_start}.")

    def schedule(step: int, total: int) -> float:
        peak = pct_start * total - 1
        if step <= peak:
            return cos_anneal(start, middle, step / peak if peak > 0 else 1.0)
        return cos_anneal(middle, end, (step - peak) / (total - 1 - peak))

    return schedule


class ParamScheduler(Callback):
    """Sets each named hyperparameter from its schedule before every training batch."""

    order = 10
    run_in_lr_find = False

    def __init__(self, scheds: dict[str, Schedule]) -> None:
        self.scheds = scheds

    def before_batch(self) -> None:
        if not self.learn.training:
            return
        step, total = self.learn.train_iter, self.learn.total_iters
        for group in self.learn.opt.param_groups:
            for name, sched in self.scheds.items():
                set_hyper(group, name, sched(step, total))


def one_cycle_scheduler(lr_max: float, div: float = 25.0, div_final: float = 1e5,
                        pct_start: float = 0.25,
                        moms: tuple[float, float, float] = (0.95, 0.85, 0.95)) -> ParamScheduler:
    """The ParamScheduler behind `Learner.fit_one_cycle`."""
    if not lr_max > 0:
        raise ValueError(f"lr_max must be > 0. Received: lr_max={lr_max}.")
    if div <= 0 or div_final <= 0:
        raise ValueError(f"div and div_final must be > 0. Received: div={div}, "
                         f"div_final={div_final}.")
    return ParamScheduler({
        "lr": one_cycle(lr_max / div, lr_max, lr_max / div_final, pct_start),
        "mom": one_cycle(*moms, pct_start),
    })


class LRFinder(Callback):
    """The sweep behind `Learner.lr_find`: the lr grows exponentially from `start_lr` to
    `end_lr` over `num_it` batches; stops early once the smoothed loss passes `stop_div`
    times its best (or is NaN)."""

    order = 10

    def __init__(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100,
                 stop_div: float = 4.0, beta: float = 0.98) -> None:
        if not 0 < start_lr < end_lr:
            raise ValueError(f"Expected 0 < start_lr < end_lr. Received: start_lr={start_lr}, "
                             f"end_lr={end_lr}.")
        if num_it < 2:
            raise ValueError(f"num_it must be >= 2. Received: num_it={num_it}.")
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
        tenth of the lr at the lowest loss (the minimum itself is already too high).
    """

    valley: float
    steep: float
    minimum: float


def suggest_lrs(lrs: list[float], losses: list[float]) -> SuggestedLRs:
    """Suggestions from an lr_find sweep (smoothed losses)."""
    pairs = [(lr, loss) for lr, loss in zip(lrs, losses, strict=True) if math.isfinite(loss)]
    if len(pairs) < 3:
        raise ValueError(f"lr_find needs at least 3 finite losses to suggest a learning rate; "
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
    minimum = lrs[min(range(n), key=losses.__getitem__)] / 10
    return SuggestedLRs(valley=valley, steep=steep, minimum=minimum)
