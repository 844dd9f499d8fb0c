"""Optimizers: SGD with momentum and AdamW, written out, and the factories `sgd` and `adamw`.

Each is a torch.optim.Optimizer (so torch's schedulers, GradScaler and state_dict format all
apply) whose step is a handful of foreach tensor ops, checked against torch.optim.SGD and
torch.optim.AdamW in tests/test_optimizers.py. They exist for start-up time: torch wraps
Optimizer.add_param_group, state_dict, load_state_dict and zero_grad, and its own step
functions, in torch._disable_dynamo, whose first call imports torch._dynamo: a large part of
a small machine's start-up (bench/cli_startup.py), for nothing when nothing is compiled.
Here the wrapped functions are called directly, and the step needs no wrapper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial

import torch
from torch import Tensor

from convscope.errors import UsageError

__all__ = ["SGD", "AdamW", "adamw", "sgd"]


def _unwrapped(method: Callable) -> Callable:
    # torch._disable_dynamo uses functools.wraps, so the plain function is __wrapped__; if a
    # later torch drops it, the wrapped method still works (only the start is slower)
    return getattr(method, "__wrapped__", method)


class _Optimizer(torch.optim.Optimizer):
    """torch.optim.Optimizer with its methods called without the torch._dynamo import."""

    add_param_group = _unwrapped(torch.optim.Optimizer.add_param_group)
    state_dict = _unwrapped(torch.optim.Optimizer.state_dict)
    load_state_dict = _unwrapped(torch.optim.Optimizer.load_state_dict)
    zero_grad = _unwrapped(torch.optim.Optimizer.zero_grad)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.grad.is_sparse:
                    raise UsageError(f"{type(self).__name__} does not take sparse gradients; "
                                     f"received one for a parameter of shape {tuple(p.shape)}.")
            if params:
                self._update(group, params, [p.grad for p in params])
        return loss

    def _update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        """Update `params` (those of `group` that have a gradient) from their `grads`."""
        raise NotImplementedError


class SGD(_Optimizer):
    """SGD with momentum, as torch.optim.SGD computes it (no dampening, no Nesterov).

    buf = momentum * buf + (grad + weight_decay * p);  p -= lr * buf
    The first step sets buf = grad. State per parameter: "momentum_buffer".
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise UsageError(f"SGD needs lr, momentum and weight_decay >= 0. Received: lr={lr}, "
                             f"momentum={momentum}, weight_decay={weight_decay}.")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def _update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        if wd:
            grads = torch._foreach_add(grads, params, alpha=wd)
        if momentum:
            bufs, olds = [], []
            for p, g in zip(params, grads, strict=True):
                state = self.state[p]
                if "momentum_buffer" in state:
                    bufs.append(state["momentum_buffer"])
                    olds.append(g)
                else:  # torch starts the buffer at the first gradient
                    state["momentum_buffer"] = g.detach().clone()
            if bufs:
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, olds)
            grads = [self.state[p]["momentum_buffer"] for p in params]
        torch._foreach_add_(params, grads, alpha=-lr)


class AdamW(_Optimizer):
    """Adam with decoupled weight decay, as torch.optim.AdamW computes it (no amsgrad).

    p *= 1 - lr * weight_decay;  m = lerp(m, grad, 1 - beta1);  v = beta2 * v + (1 - beta2) grad^2
    p -= lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)
    State per parameter: "step", "exp_avg", "exp_avg_sq", as torch names them, so each loads
    the other's state_dict.
    """

    def __init__(self, params: Iterable, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise UsageError(f"AdamW needs lr, eps, weight_decay >= 0 and betas in [0, 1). "
                             f"Received: lr={lr}, betas={betas}, eps={eps}, "
                             f"weight_decay={weight_decay}.")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        lr, (beta1, beta2), eps, wd = (group["lr"], group["betas"], group["eps"],
                                        group["weight_decay"])
        for p in params:
            if not self.state[p]:
                # the step count lives on the CPU as torch keeps it: reading it is free
                zeros = partial(torch.zeros_like, memory_format=torch.preserve_format)
                self.state[p].update(step=torch.tensor(0.0), exp_avg=zeros(p),
                                     exp_avg_sq=zeros(p))
        states = [self.state[p] for p in params]
        steps = [s["step"] for s in states]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        torch._foreach_add_(steps, 1.0)
        if wd:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        counts = [s.item() for s in steps]
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, [math.sqrt(1 - beta2**t) for t in counts])
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denom,
                                [-lr / (1 - beta1**t) for t in counts])


def adamw(params: Iterable, lr: float) -> AdamW:
    """AdamW with fastai's defaults: betas (0.9, 0.99), eps 1e-5, weight decay 0.01.

    >>> opt = adamw(torch.nn.Linear(4, 2).parameters(), lr=1e-3)
    >>> opt.param_groups[0]["betas"], opt.param_groups[0]["weight_decay"]
    ((0.9, 0.99), 0.01)
    """
    return AdamW(params, lr=lr, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)


def sgd(params: Iterable, lr: float, momentum: float = 0.9) -> SGD:
    """SGD with momentum, the optimizer of the 1cycle paper.

    >>> sgd(torch.nn.Linear(4, 2).parameters(), lr=0.1).param_groups[0]["momentum"]
    0.9
    """
    return SGD(params, lr=lr, momentum=momentum)
