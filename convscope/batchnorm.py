"""FastBatchNorm2d: torch's nn.BatchNorm2d, with a faster training path for a few channels in
channels_last memory order on the CPU.

torch's CPU kernel for channels_last batchnorm works along the channels of each pixel; with
fewer channels than a vector register holds (16 float32 with AVX-512, 8 with AVX2) it wastes
most of each step. simple_cnn's first block has 8 channels at 14x14: there torch's forward and
backward take 1.7-3x as long as the fast path below, and that one layer was a fifth of a
training step (bench/batchnorm.py measures it: an epoch in 0.84-0.90 of the time with AVX-512;
with ATen held to AVX2 kernels, no gain in an epoch).

The fast path computes the same function with a few whole-tensor operations on the memory as
it lies: a channels_last (N, C, H, W) tensor is an (N*H, W*C) matrix whose rows repeat the
channels W times, so per-channel vectors are repeated W times and every operation runs along
rows of W*C values. The variance is computed in two passes (the mean first), like torch's.
It is taken only when all of these hold, and torch's own kernel runs otherwise:
- the batch's statistics are used (training, or no running statistics),
- the input is float32 on the CPU, channels_last and contiguous, with C < 16, W*C >= 32 and
  at least 65,536 values,
- the layer is affine (gamma and beta).
The module, its parameters, buffers and state_dict are nn.BatchNorm2d's, so checkpoints,
SyncBatchNorm conversion and `isinstance(m, nn.BatchNorm2d)` are unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

MAX_CHANNELS = 15  # torch's kernel is as fast or faster from 16 channels up (both ISAs)
MIN_ROW = 32  # W*C: shorter rows leave the fast path's own per-row cost dominant
MIN_SIZE = 65536  # values: below that torch's kernel is done before the fast path's dozen ops


def _rows(x: Tensor) -> Tensor:
    """A channels_last (N, C, H, W) tensor as its (N*H, W*C) matrix (a view)."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n * h, w * c)


def _per_channel_sum(rows: Tensor, c: int) -> Tensor:
    return rows.sum(0).view(-1, c).sum(0)


def _unrows(rows: Tensor, shape: torch.Size) -> Tensor:
    n, c, h, w = shape
    return rows.view(n, h, w, c).permute(0, 3, 1, 2)


class _BatchStatsNorm(torch.autograd.Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias with the batch's per-channel mean and
    (biased) var; returns y, mean and var (the last two for the running statistics)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float):
        c, w = x.shape[1], x.shape[3]
        rows, count = _rows(x), x.numel() // c
        mean = _per_channel_sum(rows, c).div_(count)
        var = _per_channel_sum((rows - mean.repeat(w)).square_(), c).div_(count)
        rstd = (var + eps).rsqrt_()
        scale = weight * rstd
        y = torch.addcmul((bias - mean * scale).repeat(w), rows, scale.repeat(w))
        ctx.save_for_backward(rows, weight, mean, rstd)
        ctx.shape = x.shape
        ctx.mark_non_differentiable(mean, var)
        return _unrows(y, x.shape), mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor, _grad_mean, _grad_var):
        rows, weight, mean, rstd = ctx.saved_tensors
        shape = ctx.shape
        c, w = shape[1], shape[3]
        count = rows.numel() // c
        dy = _rows(grad_y.contiguous(memory_format=torch.channels_last))
        grad_bias = _per_channel_sum(dy, c)
        grad_weight = (_per_channel_sum(dy * rows, c) - mean * grad_bias) * rstd
        # dx = scale * (dy - mean(dy) - xhat * mean(dy * xhat)), as a*dy + b*x + d per channel
        scale = weight * rstd
        b = -scale * rstd * grad_weight / count
        d = -scale * grad_bias / count - b * mean
        dx = torch.addcmul(d.repeat(w), rows, b.repeat(w)).addcmul_(dy, scale.repeat(w))
        return _unrows(dx, shape), grad_weight, grad_bias, None


def uses_fast_path(bn: nn.BatchNorm2d, x: Tensor) -> bool:
    """Whether `FastBatchNorm2d` computes x with its own path rather than torch's kernel."""
    return ((bn.training or bn.running_mean is None) and bn.affine and x.ndim == 4
            and x.device.type == "cpu" and x.dtype == torch.float32
            and bn.weight.dtype == torch.float32
            and x.shape[1] <= MAX_CHANNELS and x.shape[1] * x.shape[3] >= MIN_ROW
            and x.numel() >= MIN_SIZE
            and x.is_contiguous(memory_format=torch.channels_last)
            and not torch.is_autocast_enabled("cpu"))


class FastBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d (same arguments, parameters and buffers); see the module docstring for
    when it runs its own faster path instead of torch's kernel."""

    def forward(self, x: Tensor) -> Tensor:
        if not uses_fast_path(self, x):
            return super().forward(x)
        momentum = self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # a cumulative average
                momentum = 1.0 / float(self.num_batches_tracked)
        y, mean, var = _BatchStatsNorm.apply(x, self.weight, self.bias, self.eps)
        if self.training and self.running_mean is not None:
            count = x.numel() // x.shape[1]  # > 1: W >= 3 on this path
            with torch.no_grad():
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * (count / (count - 1)), momentum)
        return y
