import pytest
import torch
from torch import nn

from convscope.layers import ScratchBatchNorm2d


@pytest.mark.parametrize("shape", [(8, 3, 5, 5), (2, 3, 1, 1), (16, 3, 7, 4)])
def test_batchnorm_from_scratch_matches_torch(shape):
    torch.manual_seed(0)
    ours, ref = ScratchBatchNorm2d(3), nn.BatchNorm2d(3)
    with torch.no_grad():
        for bn in (ours, ref):
            bn.weight.copy_(torch.tensor([0.5, 1.5, -2.0]))
            bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    for _ in range(3):  # training: batch statistics, running stats updated
        x = torch.randn(shape) * 3 + 1
        torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    assert ours.num_batches_tracked == ref.num_batches_tracked == 3
    ours.eval()
    ref.eval()
    x = torch.randn(shape)  # evaluation: running statistics
    torch.testing.assert_close(ours(x), ref(x))


def test_batchnorm_gradients_match_torch():
    x = torch.randn(6, 3, 4, 4)
    ours, ref = ScratchBatchNorm2d(3), nn.BatchNorm2d(3)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    (ours(xa) ** 3).sum().backward()
    (ref(xb) ** 3).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)


def test_batchnorm_trains_only_gamma_and_beta():
    bn = ScratchBatchNorm2d(4)
    assert sorted(n for n, p in bn.named_parameters() if p.requires_grad) == ["bias", "weight"]
    with pytest.raises(ValueError, match=r"expects \(N, 4, H, W\). Received: \(2, 3, 5, 5\)"):
        bn(torch.zeros(2, 3, 5, 5))
