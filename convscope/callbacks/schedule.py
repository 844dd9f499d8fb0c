"""Hyperparameter schedules, set on every param group before each training batch.

`one_cycle` is Leslie Smith's 1cycle as fastai runs it: a cosine warmup from lr_max/div to
lr_max, then cosine annealing to lr_max/div_final, with momentum moving the opposite way so
that the noisy high-lr phase gets less momentum. Step positions follow torch's OneCycleLR (the
peak lands on step `pct_start * total - 1` and the final value on the last step), so the two
agree exactly and the tests can use torch as the oracle.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from convscope.callback import Callback
from convscope.errors import UsageError

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
        raise UsageError(f"pct_start must be in (0, 1]. Received: pct_start={pct_start}.")

    def schedule(step: int, total: int) -> float:
        peak = pct_start * total - 1
        if step == 0:  # also a fit too short for a warm-up step: it starts where fastai's does
            return start
        if step <= peak:
            return cos_anneal(start, middle, step / peak)
        top = max(peak, 0.0)
        return cos_anneal(middle, end, min((step - top) / max(total - 1 - top, 1.0), 1.0))

    return schedule


class ParamScheduler(Callback):
    """Sets each named hyperparameter from its schedule before every training batch."""

    order = 10
    run_in_lr_find = False

    def __init__(self, scheds: dict[str, Schedule],
                 description: str | Callable[[int | None], str] = "") -> None:
        self.scheds = scheds
        self.description = description  # words, or words for a fit of so many steps

    def describe(self) -> str:
        """The schedule in words, for the report: as this fit's length makes it run, once
        the scheduler is attached to a learner."""
        if callable(self.description):
            learn = getattr(self, "learn", None)
            return self.description(learn.total_iters if learn is not None else None)
        return self.description or f"scheduled: {', '.join(self.scheds)}"

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
        raise UsageError(f"lr_max must be > 0. Received: lr_max={lr_max}.")
    if div <= 0 or div_final <= 0:
        raise UsageError(f"div and div_final must be > 0. Received: div={div}, "
                         f"div_final={div_final}.")
    lr, mom = one_cycle(lr_max / div, lr_max, lr_max / div_final, pct_start), one_cycle(
        *moms, pct_start)

    def describe(total: int | None) -> str:
        # a warm-up needs a step between the first (at lr_max/div) and the peak: a shorter fit
        # starts at lr_max/div and anneals from its second step, so its words are its rates
        if total is None or pct_start * total >= 2:
            return (f"1cycle: lr {lr_max / div:.3g} up to {lr_max:g} over the first "
                    f"{pct_start:.0%} of the steps (cosine), then down to "
                    f"{lr_max / div_final:.2g}; momentum {moms[0]:g} -> {moms[1]:g} -> "
                    f"{moms[2]:g}")
        if total == 1:
            return (f"1cycle on a fit of 1 step: lr {lr(0, 1):.3g} (1cycle's start, "
                    f"lr_max/div), momentum {mom(0, 1):g}: too short to warm up or anneal")
        return (f"1cycle on a fit of {total} steps, too short for its warm-up (the first "
                f"{pct_start:.0%} of the steps): lr {_steps(lr, total)}; momentum "
                f"{_steps(mom, total)}")

    return ParamScheduler({"lr": lr, "mom": mom}, description=describe)


def _steps(sched: Schedule, total: int) -> str:
    """A short fit's values of `sched`: each of two or three steps, else the first, the
    second and the last."""
    values = [f"{sched(step, total):.3g}" for step in range(total)]
    if total <= 3:
        return f"{', '.join(values[:-1])} and {values[-1]} at its {total} steps"
    return f"{values[0]} at the first step, then {values[1]} to {values[-1]} (cosine)"
