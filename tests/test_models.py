import pytest
import torch
from torch import nn

from convscope.layers import Flatten, conv
from convscope.models import simple_cnn


def test_conv_block_layout_and_padding():
    block = conv(3, 8, ks=5, stride=2)
    c = block[0]
    assert isinstance(c, nn.Conv2d) and c.padding == (2, 2) and c.stride == (2, 2)
    assert c.bias is None  # batchnorm's beta makes a conv bias redundant
    assert isinstance(block[1], nn.BatchNorm2d) and isinstance(block[2], nn.ReLU)
    plain = conv(3, 8, bn=False, act=False)
    assert len(plain) == 1 and plain[0].bias is not None


def test_conv_rejects_even_kernels():
    with pytest.raises(ValueError, match="Kernel size must be odd.*Received: ks=4"):
        conv(1, 8, ks=4)


def test_flatten():
    assert Flatten()(torch.zeros(5, 10, 1, 1)).shape == (5, 10)


def test_simple_cnn_is_the_books_model():
    m = simple_cnn()
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [
        (1, 8, 5), (8, 16, 3), (16, 32, 3), (32, 64, 3), (64, 10, 3)]
    assert not isinstance(m[4][-1], nn.ReLU)  # no activation on the logits
    # the grid: 28 -> 14 -> 7 -> 4 -> 2 -> 1
    x, sizes = torch.zeros(2, 1, 28, 28), []
    for block in list(m)[:5]:
        x = block(x)
        sizes.append(x.shape[-1])
    assert sizes == [14, 7, 4, 2, 1]
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_simple_cnn_configurable():
    m = simple_cnn(in_channels=3, n_classes=5, widths=(4, 8), bn=False)
    assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 5)
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())


def test_simple_cnn_wrong_channels_says_expected_and_received():
    with pytest.raises(ValueError, match=r"expects images of shape \(N, 1, H, W\).*"
                                         r"Received: \(2, 3, 28, 28\).*in_channels=3"):
        simple_cnn()(torch.zeros(2, 3, 28, 28))
