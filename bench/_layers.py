"""Helpers shared by the per-layer benchmarks (bench/batchnorm.py, bench/conv_paths.py)."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from convscope import simple_cnn


def median_ms(fn, repeats: int) -> float:
    """The median wall time of `repeats` calls of fn, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def simple_cnn_inputs(kind: type[nn.Module], bs: int) -> list[tuple[nn.Module, tuple]]:
    """Each layer of simple_cnn of this kind, with the shape of its input at batch size bs on
    28x28 digits, in the order they run."""
    model = simple_cnn()
    shapes, hooks = [], []
    for m in model.modules():
        if isinstance(m, kind):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out: shapes.append((mod, tuple(inp[0].shape)))))
    model(torch.zeros(bs, 1, 28, 28))
    for h in hooks:
        h.remove()
    return shapes
