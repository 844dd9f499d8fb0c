"""Convolution from first principles: pure tensor functions, no nn.Module.

Chapter 13 builds a convolution up from one 3x3 kernel on one pixel, to a whole image, to
padding and stride, to the view of a convolution as one big matrix product. Each step is a
function here, and each is checked against `torch.nn.functional.conv2d` in the tests. Like
PyTorch (and unlike the textbook definition of convolution) these are cross-correlations: the
kernel is not flipped.

Shapes follow PyTorch: images (N, C_in, H, W), kernels (C_out, C_in, kh, kw).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from convscope.errors import UsageError
from convscope.layers import layer_type
from convscope.trace import not_a_chain, trace

_T = [[-1.0, -1.0, -1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
KERNELS: dict[str, Tensor] = {
    "top_edge": torch.tensor(_T),
    "bottom_edge": torch.tensor(_T).flip(0),
    "left_edge": torch.tensor(_T).T.contiguous(),
    "right_edge": torch.tensor(_T).T.flip(1).contiguous(),
    "diag1_edge": torch.tensor([[0.0, -1.0, 1.0], [-1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
    "diag2_edge": torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [0.0, 0.0, 1.0]]),
    "identity": torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]),
    "box_blur": torch.full((3, 3), 1 / 9),
    "sharpen": torch.tensor([[0.0, -1.0, 0.0], [-1.0, 5.0, -1.0], [0.0, -1.0, 0.0]]),
}


def kernel(name: str) -> Tensor:
    """A named 3x3 kernel (a copy), e.g. `kernel("top_edge")`.

    >>> kernel("top_edge")
    tensor([[-1., -1., -1.],
            [ 0.,  0.,  0.],
            [ 1.,  1.,  1.]])
    """
    if name not in KERNELS:
        raise UsageError(f"Unknown kernel. Received: {name!r}. Choose one of {sorted(KERNELS)}.")
    return KERNELS[name].clone()


def apply_kernel(img: Tensor, row: int, col: int, kernel: Tensor) -> Tensor:
    """The kernel applied to one pixel: the sum of the elementwise product of the kernel and
    the window of the same size centred on (row, col).

    Args:
        img: shape (H, W).
        kernel: shape (k, k), k odd.
    Returns:
        a scalar tensor.

    >>> img = torch.zeros(5, 5); img[3:] = 1.0   # dark top, bright bottom: a horizontal edge
    >>> apply_kernel(img, 2, 2, KERNELS["top_edge"])
    tensor(3.)
    """
    k = kernel.shape[-1]
    if kernel.ndim != 2 or kernel.shape[0] != k or k % 2 == 0:
        raise UsageError(f"Expected a square kernel of odd size. Received: shape "
                         f"{tuple(kernel.shape)}.")
    r = k // 2
    h, w = img.shape[-2:]
    if not (r <= row < h - r and r <= col < w - r):
        raise UsageError(f"The {k}x{k} window around ({row}, {col}) leaves the {h}x{w} image; "
                         f"row must be in [{r}, {h - r - 1}] and col in [{r}, {w - r - 1}].")
    return (img[row - r: row + r + 1, col - r: col + r + 1] * kernel).sum()


def _padding(padding: int | str, ks: int, stride: int, dilation: int = 1) -> int:
    if padding == "same":
        if stride != 1:
            raise UsageError(f"padding='same' needs stride 1 (as in PyTorch). Received: "
                             f"stride={stride}.")
        if ks % 2 == 0:
            raise UsageError(f"padding='same' needs an odd kernel size here. Received: ks={ks}.")
        return dilation * (ks - 1) // 2
    if isinstance(padding, str) or padding < 0:
        raise UsageError(f"padding must be an int >= 0 or 'same'. Received: {padding!r}.")
    return padding


def conv_out_size(n: int, ks: int, stride: int = 1, padding: int | str = 0,
                  dilation: int = 1) -> int:
    """Output size along one dim: floor((n + 2*padding - dilation*(ks-1) - 1) / stride) + 1.

    >>> conv_out_size(28, ks=3, stride=2, padding=1)   # simple_cnn's first grid
    14
    >>> conv_out_size(7, ks=3, stride=2, padding=1)    # why the third layer is 4x4, not 3x3
    4
    """
    if n < 1 or ks < 1 or stride < 1 or dilation < 1:
        raise UsageError(f"n, ks, stride and dilation must be >= 1. Received: n={n}, ks={ks}, "
                         f"stride={stride}, dilation={dilation}.")
    p = _padding(padding, ks, stride, dilation)
    out = (n + 2 * p - dilation * (ks - 1) - 1) // stride + 1
    if out < 1:
        raise UsageError(f"A {ks}x{ks} kernel does not fit a size-{n} input with padding {p}.")
    return out


def _as_nchw(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Accept (H, W), (C, H, W) or (N, C, H, W) images and (kh, kw) or full kernels."""
    squeeze = x.ndim < 4
    while x.ndim < 4:
        x = x.unsqueeze(0)
    while w.ndim < 4:
        w = w.unsqueeze(0)
    if w.shape[1] != x.shape[1]:
        raise UsageError(f"The kernel's input channels must match the image's. Received: image "
                         f"(N, C, H, W) = {tuple(x.shape)}, kernel (C_out, C_in, kh, kw) = "
                         f"{tuple(w.shape)}.")
    return x, w, squeeze


def conv2d_loops(x: Tensor, w: Tensor, bias: Tensor | None = None, stride: int = 1,
                 padding: int | str = 0) -> Tensor:
    """Convolution the slow, obvious way: slide the kernel, one output position at a time.

    Args:
        x: images, shape (N, C_in, H, W) (or (C_in, H, W), or (H, W)).
        w: kernels, shape (C_out, C_in, kh, kw) (or (kh, kw) for one channel in and out).
        bias: shape (C_out,) or None.
    Returns:
        shape (N, C_out, H_out, W_out) (leading dims dropped as in the input).
    """
    x, w, squeeze = _as_nchw(x, w)
    kh, kw = w.shape[-2:]
    p = _padding(padding, kh, stride)
    x = nn.functional.pad(x, (p, p, p, p))
    ho = conv_out_size(x.shape[2], kh, stride)
    wo = conv_out_size(x.shape[3], kw, stride)
    out = x.new_zeros(x.shape[0], w.shape[0], ho, wo)
    for i in range(ho):
        for j in range(wo):
            window = x[:, :, i * stride: i * stride + kh, j * stride: j * stride + kw]
            # (N, 1, C_in, kh, kw) * (1, C_out, C_in, kh, kw) summed over the window
            out[:, :, i, j] = (window.unsqueeze(1) * w.unsqueeze(0)).sum(dim=(2, 3, 4))
    if bias is not None:
        out += bias.view(1, -1, 1, 1)
    return out[0] if squeeze else out


def im2col(x: Tensor, ks: tuple[int, int], stride: int = 1, padding: int | str = 0) -> Tensor:
    """Every kernel-sized window of the (padded) images, as columns.

    Args:
        x: images, shape (N, C_in, H, W).
        ks: (kh, kw).
    Returns:
        shape (N, C_in*kh*kw, H_out*W_out): column l holds the window under output position l,
        in the same (c, i, j) order as a flattened (C_in, kh, kw) kernel. Same as F.unfold.
    """
    kh, kw = ks
    p = _padding(padding, kh, stride)
    x = nn.functional.pad(x, (p, p, p, p))
    n, c, h, w = x.shape
    ho, wo = conv_out_size(h, kh, stride), conv_out_size(w, kw, stride)
    # one strided slice per kernel offset (di, dj): kh*kw slices instead of ho*wo windows
    cols = torch.stack([x[:, :, di: di + stride * ho: stride, dj: dj + stride * wo: stride]
                        for di in range(kh) for dj in range(kw)], dim=2)  # (N, C, kh*kw, ho, wo)
    return cols.reshape(n, c * kh * kw, ho * wo)  # (N, C*kh*kw, L)


def conv2d_matmul(x: Tensor, w: Tensor, bias: Tensor | None = None, stride: int = 1,
                  padding: int | str = 0) -> Tensor:
    """Cross-correlation as one matmul over im2col patches.

    Args:
        x: images, shape (N, C_in, H, W).
        w: kernels, shape (C_out, C_in, kh, kw).
    Returns:
        shape (N, C_out, H_out, W_out), H_out = (H + 2*padding - kh) // stride + 1.
    """
    x, w, squeeze = _as_nchw(x, w)
    kh, kw = w.shape[-2:]
    p = _padding(padding, kh, stride)
    ho = conv_out_size(x.shape[2], kh, stride, p)
    wo = conv_out_size(x.shape[3], kw, stride, p)
    cols = im2col(x, (kh, kw), stride, p)  # (N, C_in*kh*kw, L)
    out = w.reshape(w.shape[0], -1) @ cols  # (C_out, C_in*kh*kw) @ (N, C_in*kh*kw, L)
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    out = out.view(x.shape[0], w.shape[0], ho, wo)  # (N, C_out, H_out, W_out)
    return out[0] if squeeze else out


def conv_matrix(kernel: Tensor, in_shape: tuple[int, ...], stride: int = 1,
                padding: int | str = 0) -> Tensor:
    """The matrix W with `W @ x.flatten() == conv(x).flatten()` for one image x.

    Each row is one output value: the kernel's weights laid where its window falls on the
    flattened input, zeros everywhere else. Rows share the same few weights.

    Args:
        kernel: shape (C_out, C_in, kh, kw) or (kh, kw).
        in_shape: (C_in, H, W) or (H, W).
    Returns:
        shape (C_out*H_out*W_out, C_in*H*W).

    >>> W = conv_matrix(torch.arange(1., 10.).view(3, 3), (4, 4))
    >>> W.shape, int((W == 0).sum())
    (torch.Size([4, 16]), 28)
    """
    w = kernel
    while w.ndim < 4:
        w = w.unsqueeze(0)
    shape = tuple(in_shape) if len(in_shape) == 3 else (1, *in_shape)
    if shape[0] != w.shape[1]:
        raise UsageError(f"in_shape has {shape[0]} channels but the kernel expects {w.shape[1]}."
                         f" Received: in_shape={tuple(in_shape)}, kernel {tuple(w.shape)}.")
    c, h, wd = shape
    kh, kw = w.shape[-2:]
    p = _padding(padding, kh, stride)
    ho, wo = conv_out_size(h, kh, stride, p), conv_out_size(wd, kw, stride, p)
    W = w.new_zeros(w.shape[0], ho, wo, c, h + 2 * p, wd + 2 * p)
    for i in range(ho):
        for j in range(wo):
            W[:, i, j, :, i * stride: i * stride + kh, j * stride: j * stride + kw] = w
    W = W[..., p: p + h, p: p + wd]  # weights that fall on padding multiply zeros: drop them
    return W.reshape(w.shape[0] * ho * wo, c * h * wd)


def conv_matrix_stats(kernel: Tensor, in_shape: tuple[int, ...], stride: int = 1,
                      padding: int | str = 0) -> dict[str, float]:
    """What makes the conv matrix special: mostly zeros, and few distinct weights shared.

    Returns:
        shape of W; zero_share, the share of entries that are structural zeros (no weight
        there, whatever the kernel's values); weights, the distinct weights (the kernel's
        size); entries, the non-zero entries; uses_per_weight, entries / weights.

    >>> s = conv_matrix_stats(torch.ones(3, 3), (4, 4))
    >>> s["zero_share"], s["weights"], s["entries"]
    (0.4375, 9, 36)
    """
    w = kernel if kernel.ndim == 4 else kernel.reshape(1, 1, *kernel.shape[-2:])
    ids = torch.arange(1, w.numel() + 1, dtype=torch.float64).view(w.shape)
    W = conv_matrix(ids, in_shape, stride, padding)  # each entry names the weight it holds
    entries = int((W != 0).sum())
    used = int(torch.unique(W[W != 0]).numel())
    return {"rows": W.shape[0], "cols": W.shape[1], "zero_share": 1 - entries / W.numel(),
            "weights": used, "entries": entries, "uses_per_weight": entries / max(used, 1)}


def receptive_field(model: nn.Module, input_size: tuple[int, int]) -> list[dict]:
    """Per layer: how many input pixels one output value sees (size), the distance in input
    pixels between neighbouring outputs (jump), and where the first output's field is
    centred (start, in input pixel coordinates; negative means it reaches into the padding).

    Layers without a kernel (batchnorm, ReLU) keep the field of their input. Computed from each
    layer's kernel_size, stride, padding and dilation in the order the model runs them.

    Args:
        model: a CNN; its layers are visited by running one zero image of `input_size`.
        input_size: (C, H, W) or (H, W) of one input.

    >>> from convscope.layers import conv
    >>> two = nn.Sequential(conv(1, 4, bn=False), conv(4, 8, bn=False))
    >>> [(r["layer"], r["size"], r["jump"]) for r in receptive_field(two, (1, 28, 28))
    ...  if r["type"] == "Conv2d"]
    [('0.0', 3, 2), ('1.0', 7, 4)]
    """
    records = trace(model, input_size)
    reason = not_a_chain(records)
    if reason is not None:
        raise UsageError(f"receptive fields add up layer by layer along a chain of layers, and "
                         f"this model is not one: {reason}")
    size, jump, start = 1, 1, 0.5
    rows = []
    for rec in records:
        m = rec["module"]
        if hasattr(m, "kernel_size") and hasattr(m, "stride"):
            k, s, p, d = (_first(getattr(m, a, 1)) for a in
                          ("kernel_size", "stride", "padding", "dilation"))
            if isinstance(p, str):
                p = _padding(p, k, s, d)
            size += (k - 1) * d * jump
            start += ((k - 1) * d / 2 - p) * jump
            jump *= s
        rows.append({"layer": rec["name"], "type": layer_type(m), "size": size,
                     "jump": jump, "start": start})
    return rows


def _first(v):
    return v[0] if isinstance(v, tuple) else v


__all__ = ["KERNELS", "apply_kernel", "conv2d_loops", "conv2d_matmul", "conv_matrix",
           "conv_matrix_stats", "conv_out_size", "im2col", "kernel", "receptive_field"]
