"""Layers: the conv block of chapter 13 (conv -> batchnorm -> ReLU) and Flatten."""

from __future__ import annotations

from torch import Tensor, nn


class Flatten(nn.Module):
    """(N, C, 1, 1) -> (N, C): drops the unit spatial dims left by the last stride-2 conv."""

    def forward(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], -1)


def conv(ni: int, nf: int, ks: int = 3, stride: int = 2, act: bool = True,
         bn: bool = True) -> nn.Sequential:
    """A conv block: Conv2d (padding ks//2), then optionally BatchNorm2d and ReLU.

    The conv has no bias when batchnorm follows, since batchnorm's beta would cancel it.

    Args:
        ni: input channels.
        nf: output channels (filters).
        ks: kernel size, odd so that padding ks//2 keeps the grid centred.
        stride: 2 halves the grid, as every layer of `simple_cnn` does.
        act: end with a ReLU.
        bn: add a BatchNorm2d after the conv.

    >>> import torch
    >>> block = conv(1, 8, ks=5)
    >>> [type(m).__name__ for m in block], block(torch.zeros(2, 1, 28, 28)).shape
    (['Conv2d', 'BatchNorm2d', 'ReLU'], torch.Size([2, 8, 14, 14]))
    """
    if ks % 2 != 1:
        raise ValueError(f"Kernel size must be odd so padding ks//2 keeps the grid centred. "
                         f"Received: ks={ks}.")
    layers: list[nn.Module] = [nn.Conv2d(ni, nf, ks, stride=stride, padding=ks // 2, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(nf))
    if act:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)
