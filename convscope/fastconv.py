"""FastConv2d: torch's nn.Conv2d, with faster CPU paths for two shapes simple_cnn has.

1. **The input gradient of a 3x3, stride-2, padding-1 convolution with at most 8 input
   channels** (simple_cnn's second conv, 8 -> 16 channels at 14x14). oneDNN computes it as a
   transposed convolution, which for so few channels is slow: 1.3-2.9x the time of the path
   below (bench/conv_paths.py; from 16 channels up oneDNN is the faster, on AVX2 and AVX-512
   alike). With stride 2, which kernel taps reach an input pixel depends only on the parity
   of its row and column: an even row is reached by the kernel's middle row from one output
   row, an odd row by its first and last rows from two. So each of the four parities (phases)
   is a stride-1 convolution of the output gradient with a 1x1, 1x2, 2x1 or 2x2 part of the
   kernel. All four are computed as one 2x2 convolution whose output channels are the phases
   (the taps a phase does not use are zero), then interleaved into the input's grid. Only for
   inputs of at least 400,000 values (256 images of simple_cnn's 8x14x14): on smaller
   batches the few extra operations cost more than they save.
2. **A convolution whose output is 1x1** (simple_cnn's last, which sees a 2x2 grid on 28x28
   digits): it is a matrix product of each image's flattened input with the part of the kernel
   the input overlaps, forward and backward, which costs a fraction of oneDNN's convolution.

Both compute the same function as nn.Conv2d (to float32 rounding). The forward of path 1 is
torch's own convolution; only its input gradient differs. Path 1 is taken in training on
float32 channels_last input on the CPU that needs a gradient, path 2 on float32 CPU input; torch's
convolution runs otherwise (and for any other padding mode, groups or dilation, or under
autocast). The module, its parameters and state_dict are nn.Conv2d's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

MAX_PHASE_CHANNELS = 8  # from 16 input channels up, oneDNN's input gradient is the faster
# values in the input: below that the phase path's extra ops cost more than they save (a whole
# layer 1.1-1.26x oneDNN's at 64-128 images of 8x14x14, 0.79-0.95x at 256-512)
MIN_PHASE_SIZE = 400_000

# For a 3x3 kernel at stride 2 and padding 1, input row 2m + a (parity a) is reached from output
# row m + t through kernel row TAP[a][t]: (a=0) row 1 from m; (a=1) row 2 from m, row 0 from m+1.
# None: that phase has no tap there. Index 9 below is a zero appended to the 9 kernel taps.
_TAP = ((1, None), (2, 0))


def _phase_index() -> Tensor:
    """For the (2, 2, 2, 2) grid of (row parity, column parity, row tap, column tap), the index
    of the 3x3 kernel tap it uses (row * 3 + column), or 9 (a zero) where it uses none."""
    idx = []
    for a in (0, 1):
        for b in (0, 1):
            for t in (0, 1):
                for u in (0, 1):
                    r, c = _TAP[a][t], _TAP[b][u]
                    idx.append(9 if r is None or c is None else r * 3 + c)
    return torch.tensor(idx)


_PHASE_INDEX = _phase_index()


def phase_weight(weight: Tensor) -> Tensor:
    """A (C_out, C_in, 3, 3) kernel as the (4 * C_in, C_out, 2, 2) kernel that maps an output
    gradient (padded by one row and column at the end) to the four phases of the input
    gradient, phase-major: channel (2a + b) * C_in + c is input channel c at rows of parity a
    and columns of parity b."""
    c_out, c_in = weight.shape[:2]
    taps = torch.cat([weight.reshape(c_out, c_in, 9), weight.new_zeros(c_out, c_in, 1)], 2)
    k = taps.index_select(2, _PHASE_INDEX.to(weight.device)).view(c_out, c_in, 2, 2, 2, 2)
    return (k.permute(2, 3, 1, 0, 4, 5).reshape(4 * c_in, c_out, 2, 2)
            .contiguous(memory_format=torch.channels_last))


def phase_input_grad(grad_out: Tensor, weight: Tensor, height: int, width: int) -> Tensor:
    """The input gradient of a 3x3, stride-2, padding-1 convolution, as one 2x2 convolution
    and an interleave (see the module docstring). channels_last, (N, C_in, height, width)."""
    n, _, ho, wo = grad_out.shape
    c_in = weight.shape[1]
    phases = F.conv2d(F.pad(grad_out, (0, 1, 0, 1)), phase_weight(weight))  # (N, 4C, Ho, Wo)
    # channels_last memory of phases is (N, Ho, Wo, a, b, C) and that of the (2Ho, 2Wo) grid
    # (N, Ho, a, Wo, b, C): rows 2m + a, columns 2j + b; one copy interleaves them
    grid = torch.empty(n, c_in, 2 * ho, 2 * wo, dtype=grad_out.dtype, device=grad_out.device,
                       memory_format=torch.channels_last)
    (grid.permute(0, 2, 3, 1).view(n, ho, 2, wo, 2, c_in)
     .copy_(phases.permute(0, 2, 3, 1).view(n, ho, wo, 2, 2, c_in).permute(0, 1, 3, 2, 4, 5)))
    if (2 * ho, 2 * wo) == (height, width):
        return grid
    # an odd side: the grid has one row or column past the input's
    return grid[:, :, :height, :width].contiguous(memory_format=torch.channels_last)


class _PhaseConv(torch.autograd.Function):
    """A 3x3 stride-2 padding-1 conv: torch's forward, the phase input gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride=2, padding=1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = phase_input_grad(grad_out, weight, x.shape[2], x.shape[3])
        if ctx.needs_input_grad[1]:
            grad_w = torch.nn.grad.conv2d_weight(x, weight.shape, grad_out, stride=2, padding=1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b


def _plain(conv: nn.Conv2d, x: Tensor) -> bool:
    """The settings both paths assume: zero padding of a plain (ungrouped, undilated)
    convolution of float32 CPU tensors, outside autocast."""
    return (conv.padding_mode == "zeros" and conv.groups == 1 and conv.dilation == (1, 1)
            and isinstance(conv.padding, tuple) and x.ndim == 4
            and x.device.type == "cpu" and x.dtype == torch.float32
            and conv.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"))


def path(conv: nn.Conv2d, x: Tensor) -> str:
    """Which computation FastConv2d runs for input x: "phase" (path 1 of the module
    docstring), "matmul" (path 2) or "torch"."""
    if not _plain(conv, x):
        return "torch"
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    h, w = x.shape[-2:]
    if (h + 2 * ph - kh) // sh == 0 and (w + 2 * pw - kw) // sw == 0 and h >= 1 and w >= 1:
        return "matmul"
    if ((kh, kw, sh, sw, ph, pw) == (3, 3, 2, 2, 1, 1) and x.shape[1] <= MAX_PHASE_CHANNELS
            and x.numel() >= MIN_PHASE_SIZE and torch.is_grad_enabled() and x.requires_grad
            and x.is_contiguous(memory_format=torch.channels_last)):
        return "phase"
    return "torch"


def _one_by_one(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A convolution with a 1x1 output as a matrix product: the output's one window covers
    input rows 0 .. min(H, kh - ph) - 1 with kernel rows ph onwards (columns alike)."""
    (kh, kw), (ph, pw) = conv.kernel_size, conv.padding
    rows, cols = min(x.shape[2], kh - ph), min(x.shape[3], kw - pw)
    seen = x[:, :, :rows, :cols]
    kernel = conv.weight[:, :, ph:ph + rows, pw:pw + cols]
    # flattened in (row, column, channel) order, which is the memory order of channels_last
    flat = seen.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
    out = F.linear(flat, kernel.permute(0, 2, 3, 1).reshape(conv.out_channels, -1), conv.bias)
    return out.view(x.shape[0], conv.out_channels, 1, 1)


class FastConv2d(nn.Conv2d):
    """nn.Conv2d (same arguments, parameters and state_dict); see the module docstring for the
    two cases it computes with its own faster path instead of torch's convolution."""

    def forward(self, x: Tensor) -> Tensor:
        chosen = path(self, x)
        if chosen == "matmul":
            return _one_by_one(self, x)
        if chosen == "phase":
            return _PhaseConv.apply(x, self.weight, self.bias)
        return super().forward(x)
