import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from convscope.conv import (
    KERNELS,
    apply_kernel,
    conv2d_loops,
    conv2d_matmul,
    conv_matrix,
    conv_matrix_stats,
    conv_out_size,
    im2col,
    kernel,
    receptive_field,
)
from convscope.layers import conv


@st.composite
def conv_case(draw):
    """Random images, kernels, stride, padding and bias that make a valid convolution."""
    ks = draw(st.sampled_from([1, 3, 5]))
    stride = draw(st.integers(1, 3))
    padding = draw(st.sampled_from([0, 1, 2, "same"])) if stride == 1 else draw(
        st.integers(0, 2))
    h = draw(st.integers(max(1, ks - 2 * (padding if isinstance(padding, int) else 0)), 9))
    w = draw(st.integers(max(1, ks - 2 * (padding if isinstance(padding, int) else 0)), 9))
    n, cin, cout = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=g, dtype=torch.float64)
    k = torch.randn(cout, cin, ks, ks, generator=g, dtype=torch.float64)
    bias = torch.randn(cout, generator=g, dtype=torch.float64) if draw(st.booleans()) else None
    return x, k, bias, stride, padding


@settings(max_examples=60, deadline=None)
@given(conv_case())
def test_three_ways_agree_with_torch(case):
    x, k, bias, stride, padding = case
    ref = F.conv2d(x, k, bias, stride=stride, padding=padding)
    torch.testing.assert_close(conv2d_loops(x, k, bias, stride, padding), ref)
    torch.testing.assert_close(conv2d_matmul(x, k, bias, stride, padding), ref)
    for i in range(x.shape[0]):
        W = conv_matrix(k, tuple(x.shape[1:]), stride, padding)
        out = W @ x[i].flatten()
        if bias is not None:
            out = out + bias.repeat_interleave(ref.shape[2] * ref.shape[3])
        torch.testing.assert_close(out, ref[i].flatten())


@settings(max_examples=40, deadline=None)
@given(conv_case())
def test_im2col_matches_unfold(case):
    x, k, _, stride, padding = case
    p = (k.shape[-1] - 1) // 2 if padding == "same" else padding
    torch.testing.assert_close(im2col(x, k.shape[-2:], stride, padding),
                               F.unfold(x, k.shape[-2:], padding=p, stride=stride))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 64), st.integers(1, 7), st.integers(1, 4), st.integers(0, 3),
       st.integers(1, 3))
def test_conv_out_size_matches_torch(n, ks, stride, padding, dilation):
    if n + 2 * padding < dilation * (ks - 1) + 1:
        with pytest.raises(ValueError, match="does not fit"):
            conv_out_size(n, ks, stride, padding, dilation)
        return
    out = F.conv2d(torch.zeros(1, 1, n, n), torch.zeros(1, 1, ks, ks), stride=stride,
                   padding=padding, dilation=dilation)
    assert conv_out_size(n, ks, stride, padding, dilation) == out.shape[-1]


def test_kernel_on_zeros_gives_zeros():
    x = torch.zeros(1, 3, 8, 8)
    k = torch.randn(4, 3, 3, 3)
    assert torch.count_nonzero(conv2d_matmul(x, k, padding=1)) == 0
    assert torch.count_nonzero(conv2d_loops(x, k, stride=2)) == 0


def test_named_kernels():
    assert kernel("top_edge").tolist() == [[-1, -1, -1], [0, 0, 0], [1, 1, 1]]
    assert set(KERNELS) >= {"top_edge", "bottom_edge", "left_edge", "right_edge", "diag1_edge",
                            "diag2_edge", "identity", "box_blur", "sharpen"}
    for name in ("top_edge", "bottom_edge", "left_edge", "right_edge"):
        assert KERNELS[name].sum() == 0, name  # an edge detector ignores flat regions
    # the diagonal kernels are the book's, which sum to 1 (they keep some of the brightness)
    assert KERNELS["diag1_edge"].tolist() == [[0, -1, 1], [-1, 1, 0], [1, 0, 0]]
    assert kernel("box_blur").sum().item() == pytest.approx(1)
    with pytest.raises(ValueError, match=r"Unknown kernel. Received: 'blur'. Choose one of"):
        kernel("blur")


def test_edge_kernels_find_their_edges():
    img = torch.zeros(7, 7)
    img[4:] = 1.0  # bright bottom half: a horizontal edge between rows 3 and 4
    assert apply_kernel(img, 3, 3, kernel("top_edge")) == 3
    assert apply_kernel(img, 3, 3, kernel("bottom_edge")) == -3
    assert apply_kernel(img, 3, 3, kernel("left_edge")) == 0
    assert apply_kernel(img, 1, 3, kernel("top_edge")) == 0  # flat region
    side = torch.zeros(7, 7)
    side[:, 4:] = 1.0
    assert apply_kernel(side, 3, 3, kernel("left_edge")) == 3


@pytest.mark.parametrize("ks", [3, 5])
def test_apply_kernel_equals_one_output_of_conv2d(ks):
    img, k = torch.randn(9, 9), torch.randn(ks, ks)
    full = F.conv2d(img[None, None], k[None, None])[0, 0]
    r = ks // 2
    for row, col in [(r, r), (4, 4), (8 - r, 8 - r)]:
        torch.testing.assert_close(apply_kernel(img, row, col, k), full[row - r, col - r])


def test_apply_kernel_errors():
    with pytest.raises(ValueError, match=r"window around \(0, 4\) leaves the 9x9 image"):
        apply_kernel(torch.zeros(9, 9), 0, 4, torch.ones(3, 3))
    with pytest.raises(ValueError, match="odd size"):
        apply_kernel(torch.zeros(9, 9), 4, 4, torch.ones(2, 2))


def test_conv_matrix_zeros_and_shared_weights():
    k = torch.arange(1.0, 10.0).view(3, 3)
    W = conv_matrix(k, (4, 4))
    assert W.shape == (4, 16)
    # each row holds all nine weights once; the book's figure: 7 zeros per row
    for row in W:
        assert sorted(row[row != 0].tolist()) == list(range(1, 10))
        assert int((row == 0).sum()) == 7
    s = conv_matrix_stats(k, (4, 4))
    assert (s["weights"], s["entries"], s["uses_per_weight"]) == (9, 36, 4)
    big = conv_matrix_stats(torch.ones(3, 3), (28, 28), stride=2, padding=1)
    assert big["rows"] == 14 * 14 and big["zero_share"] > 0.98


def test_shape_errors_say_what_was_received():
    with pytest.raises(ValueError, match=r"Received: image .* \(1, 3, 5, 5\), kernel .* "
                                         r"\(2, 1, 3, 3\)"):
        conv2d_matmul(torch.zeros(1, 3, 5, 5), torch.zeros(2, 1, 3, 3))
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        conv_out_size(8, 3, stride=2, padding="same")


def test_colour_image_kernel_sums_over_channels():
    """A (1, 3, 3, 3) kernel on a (3, H, W) image: one filter per channel, results summed."""
    img = torch.rand(3, 6, 6)
    k = kernel("top_edge").expand(1, 3, 3, 3)
    per_channel = sum(conv2d_matmul(img[c:c + 1], kernel("top_edge")) for c in range(3))
    torch.testing.assert_close(conv2d_matmul(img, k)[0], per_channel[0])


def test_receptive_field_two_stride2_3x3_is_7x7():
    model = nn.Sequential(conv(1, 4, bn=False), conv(4, 8, bn=False))
    convs = [r for r in receptive_field(model, (1, 28, 28)) if r["type"] == "Conv2d"]
    assert [(r["size"], r["jump"]) for r in convs] == [(3, 2), (7, 4)]


def test_receptive_field_matches_gradient_footprint():
    """The field is exactly the input pixels whose gradient reaches one interior output."""
    model = nn.Sequential(nn.Conv2d(1, 1, 5, stride=2, padding=2), nn.ReLU(),
                          nn.Conv2d(1, 1, 3, stride=2, padding=1, dilation=1),
                          nn.AvgPool2d(3, stride=1, padding=1))  # max-pool: argmax only
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1.0)
                m.bias.fill_(0.1)
    x = torch.ones(1, 1, 64, 64, requires_grad=True)
    out = model(x)
    out[0, 0, 8, 8].backward()
    rows, cols = torch.nonzero(x.grad[0, 0], as_tuple=True)
    last = receptive_field(model, (1, 64, 64))[-1]
    assert rows.max() - rows.min() + 1 == last["size"]
    assert cols.max() - cols.min() + 1 == last["size"]
    centre = (rows.max() + rows.min()).item() / 2 + 0.5  # pixel centres at i + 0.5
    assert centre == pytest.approx(last["start"] + 8 * last["jump"])
