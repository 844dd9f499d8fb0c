"""Metrics: functions (pred, targ) -> the batch's mean, computed on the valid set each epoch."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import Tensor


def accuracy(pred: Tensor, targ: Tensor) -> Tensor:
    """Share of rows whose largest logit is the target class; pred (N, C), targ (N,).

    >>> import torch
    >>> float(accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1])))
    0.5
    """
    return (pred.argmax(dim=1) == targ).float().mean()


def metric_name(m: Callable) -> str:
    """The column a metric gets in the epoch table: its function's name."""
    if isinstance(m, partial):
        m = m.func
    return getattr(m, "__name__", type(m).__name__)
