"""Layers: the conv block of chapter 13 (conv -> batchnorm -> ReLU), Flatten, and
ScratchBatchNorm2d, batchnorm written from scratch to show what it computes (simple_cnn uses
fastconv.FastConv2d and batchnorm.FastBatchNorm2d, torch's layers with faster CPU paths)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from convscope import batchnorm, fastconv
from convscope.errors import UsageError


class Flatten(nn.Module):
    """(N, C, 1, 1) -> (N, C): drops the unit spatial dims left by the last stride-2 conv."""

    def forward(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], -1)


def conv(ni: int, nf: int, ks: int = 3, stride: int = 2, act: bool = True,
         bn: bool = True) -> nn.Sequential:
    """A conv block: Conv2d (FastConv2d, padding ks//2), then optionally batchnorm
    (FastBatchNorm2d) and ReLU.

    The conv has no bias when batchnorm follows, since batchnorm's beta would cancel it.

    Args:
        ni: input channels.
        nf: output channels (filters).
        ks: kernel size, odd so that padding ks//2 keeps the grid centred.
        stride: 2 halves the grid, as every layer of `simple_cnn` does.
        act: end with a ReLU.
        bn: add batchnorm after the conv.

    >>> import torch
    >>> block = conv(1, 8, ks=5)
    >>> [type(m).__name__ for m in block], block(torch.zeros(2, 1, 28, 28)).shape
    (['FastConv2d', 'FastBatchNorm2d', 'ReLU'], torch.Size([2, 8, 14, 14]))
    """
    if ks % 2 != 1:
        raise UsageError(f"Kernel size must be odd so padding ks//2 keeps the grid centred. "
                         f"Received: ks={ks}.")
    layers: list[nn.Module] = [fastconv.FastConv2d(ni, nf, ks, stride=stride, padding=ks // 2,
                                                     bias=not bn)]
    if bn:
        layers.append(batchnorm.FastBatchNorm2d(nf))
    if act:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def layer_type(module: nn.Module) -> str:
    """A layer's type as summaries and statistics name it: torch's layer for convscope's faster
    stand-ins (a FastConv2d is shown as Conv2d and a FastBatchNorm2d as BatchNorm2d, as the
    book's summaries show them), the class's own name for everything else."""
    cls = type(module)
    if cls in (fastconv.FastConv2d, batchnorm.FastBatchNorm2d):
        return cls.__mro__[1].__name__
    return cls.__name__


class ScratchBatchNorm2d(nn.Module):
    """Batch normalisation written out, to show what nn.BatchNorm2d does.

    In training, each channel is normalised by the mean and (biased) variance of the batch
    over (N, H, W), then scaled by gamma and shifted by beta, the only trainable parameters.
    The running statistics (an exponential average with `momentum`, the variance unbiased)
    are buffers, updated in training and used instead of the batch's in evaluation.

    >>> import torch
    >>> bn = ScratchBatchNorm2d(3)
    >>> [name for name, p in bn.named_parameters()], [name for name, b in bn.named_buffers()]
    (['weight', 'bias'], ['running_mean', 'running_var', 'num_batches_tracked'])
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))  # gamma
        self.bias = nn.Parameter(torch.zeros(num_features))  # beta
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.num_features:
            raise UsageError(f"ScratchBatchNorm2d({self.num_features}) expects (N, "
                             f"{self.num_features}, H, W). Received: {tuple(x.shape)}.")
        if self.training:
            mean = x.mean(dim=(0, 2, 3))  # (C,)
            var = x.var(dim=(0, 2, 3), unbiased=False)  # (C,)
            n = x.numel() / x.shape[1]
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var * n / max(n - 1, 1), self.momentum)
                self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + self.eps)
        return x_hat * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
