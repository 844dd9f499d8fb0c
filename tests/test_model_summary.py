import copy

import torch
from torch import nn

from convscope.model_summary import summary
from convscope.models import simple_cnn


def book_first_model() -> nn.Module:
    """The chapter's first CNN (3s vs 7s): conv widths 4, 8, 16, 32, 2, 3x3 kernels, no BN."""
    return simple_cnn(widths=(4, 8, 16, 32), n_classes=2, first_ks=3, bn=False)


def test_book_first_model_params_and_grids():
    s = summary(book_first_model(), (1, 28, 28))
    convs = [r for r in s.rows if r["type"] == "Conv2d"]
    assert [r["params"] for r in convs] == [40, 296, 1168, 4640, 578]
    assert [r["output"][1:] for r in convs] == [(14, 14), (7, 7), (4, 4), (2, 2), (1, 1)]
    # the third layer: 4x4 output positions x (1168 - 16 bias) weights each
    assert convs[2]["macs"] == 4 * 4 * (1168 - 16)
    assert [r["rf"] for r in convs[:2]] == [3, 7]


def test_macs_count_real_multiplications():
    """Count the multiplications of a conv by hand-run im2col: outputs x weights per output."""
    m = nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(80, 7))
    s = summary(m, (3, 8, 8))
    assert s.rows[0]["macs"] == 5 * 4 * 4 * (3 * 3 * 3)
    assert s.rows[2]["macs"] == 80 * 7
    assert s.total_macs == s.rows[0]["macs"] + s.rows[2]["macs"]
    assert s.total_params == sum(p.numel() for p in m.parameters())


def test_summary_has_no_side_effects():
    model = simple_cnn()
    model.train()
    model[1].eval()  # a submodule in its own mode must keep it
    x = torch.randn(4, 1, 28, 28)
    model(x).sum().backward()
    before = copy.deepcopy(model.state_dict())
    grads = [p.grad.clone() for p in model.parameters()]
    summary(model, (1, 28, 28))
    after = model.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]), k  # weights and BN running stats
    for g, p in zip(grads, model.parameters(), strict=True):
        assert torch.equal(g, p.grad)
    assert model.training and not model[1].training and model[2].training
    assert not model[0][0]._forward_hooks  # hooks removed


def test_summary_table_text():
    text = str(summary(book_first_model(), (1, 28, 28)))
    assert "input: 1 x 28 x 28" in text
    assert "total params: 6,722 (trainable 6,722)" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("2.0"))
    assert "16 x 4 x 4" in line and "1,168" in line and "18,432" in line and "15x15" in line


def test_frozen_layers_show_as_not_trainable():
    m = simple_cnn()
    for p in m[0].parameters():
        p.requires_grad_(False)
    s = summary(m, (1, 28, 28))
    assert s.rows[0]["trainable"] == "no" and s.rows[3]["trainable"] == "yes"
    assert s.trainable_params == s.total_params - 200 - 16
