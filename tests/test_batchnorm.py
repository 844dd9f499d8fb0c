"""convscope's BatchNorm2d computes what nn.BatchNorm2d does, on its own path and off it."""

import pytest
import torch
from torch import nn

from convscope import simple_cnn
from convscope.batchnorm import FastBatchNorm2d, _BatchStatsNorm, uses_fast_path

CL = torch.channels_last


def pair(c: int, **kwargs) -> tuple[FastBatchNorm2d, nn.BatchNorm2d]:
    torch.manual_seed(0)
    ours, ref = FastBatchNorm2d(c, **kwargs), nn.BatchNorm2d(c, **kwargs)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2.0)
        ours.bias.normal_()
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def run(bn: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    bn.weight.grad = bn.bias.grad = None
    y = bn(x)
    y.backward(grad)
    return y, x.grad, bn.weight.grad, bn.bias.grad


@pytest.mark.parametrize("shape", [(64, 8, 14, 14), (32, 4, 28, 28), (16, 12, 20, 24)])
def test_fast_path_matches_torch_in_training(shape):
    ours, ref = pair(shape[1])
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):  # the running statistics follow over several batches
        x = (torch.randn(shape, generator=gen) * 3 + 2).contiguous(memory_format=CL)
        grad = torch.randn(shape, generator=gen).contiguous(memory_format=CL)
        assert uses_fast_path(ours, x)
        got, want = run(ours, x, grad), run(ref, x, grad)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert got[0].is_contiguous(memory_format=CL) and got[1].is_contiguous(memory_format=CL)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name))
    assert int(ours.num_batches_tracked) == 3


def test_cumulative_average_and_no_running_stats():
    shape = (64, 8, 14, 14)
    for kwargs in ({"momentum": None}, {"track_running_stats": False}):
        ours, ref = pair(8, **kwargs)
        for seed in range(3):
            x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
            x = x.contiguous(memory_format=CL)
            assert uses_fast_path(ours, x)
            torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
        if ref.running_mean is not None:
            torch.testing.assert_close(ours.running_mean, ref.running_mean)
            torch.testing.assert_close(ours.running_var, ref.running_var)
        ours.eval(), ref.eval()  # without running stats, eval still uses the batch's
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


def test_backward_formula_by_finite_differences():
    x = torch.randn(3, 5, 4, 7, dtype=torch.float64).contiguous(memory_format=CL)
    w = torch.rand(5, dtype=torch.float64) + 0.5
    b = torch.randn(5, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda *t: _BatchStatsNorm.apply(*t, 1e-5)[0], inputs)


@pytest.mark.parametrize("case", ["eval", "nchw", "16 channels", "float64", "small", "bf16"])
def test_torch_kernel_where_the_fast_path_does_not_pay_or_apply(case):
    c = 16 if case == "16 channels" else 8
    ours, ref = pair(c)
    shape = (2, c, 14, 14) if case == "small" else (64, c, 14, 14)
    x = torch.randn(shape)
    if case != "nchw":
        x = x.contiguous(memory_format=CL)
    if case == "float64":
        ours, ref, x = ours.double(), ref.double(), x.double()
    if case == "eval":
        ours.eval(), ref.eval()
    if case == "bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not uses_fast_path(ours, x)
        return
    assert not uses_fast_path(ours, x)
    torch.testing.assert_close(ours(x), ref(x))


def test_a_drop_in_nn_batchnorm2d():
    blocks = [m for m in simple_cnn().modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(blocks) == 5 and all(type(m) is FastBatchNorm2d for m in blocks)
    ours, ref = pair(8)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(ours))
    assert isinstance(synced[0], nn.SyncBatchNorm)
