import copy
import subprocess
import sys

import pytest
import torch

from convscope.optimizers import SGD, AdamW, adamw


def twin_params(seed=0):
    """Two identical parameter lists (a matrix, a vector, a 4-d kernel in channels_last)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (7,), (4, 2, 3, 3)]
    base = [torch.randn(s, generator=g) for s in shapes]
    base[2] = base[2].contiguous(memory_format=torch.channels_last)
    return ([b.clone().requires_grad_() for b in base],
            [b.clone().requires_grad_() for b in base])


def run_both(ours, ref, params, ref_params, n_steps=12, hypers=None):
    g = torch.Generator().manual_seed(1)
    for i in range(n_steps):
        grads = [torch.randn(p.shape, generator=g) for p in params]
        for p, q, gr in zip(params, ref_params, grads, strict=True):
            # one parameter sits out some steps (no gradient): its state must not move
            p.grad = None if (i % 3 == 1 and p.ndim == 1) else gr.clone()
            q.grad = None if (i % 3 == 1 and p.ndim == 1) else gr.clone()
        for name, values in (hypers or {}).items():  # a schedule changing hypers every step
            ours.param_groups[0][name] = ref.param_groups[0][name] = values[i]
        ours.step()
        ref.step()
        ours.zero_grad()
        ref.zero_grad()
        for p, q in zip(params, ref_params, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("momentum,weight_decay", [(0.9, 0.0), (0.0, 0.0), (0.85, 1e-2)])
def test_sgd_matches_torch(momentum, weight_decay):
    ps, qs = twin_params()
    run_both(SGD(ps, lr=0.1, momentum=momentum, weight_decay=weight_decay),
             torch.optim.SGD(qs, lr=0.1, momentum=momentum, weight_decay=weight_decay), ps, qs,
             hypers={"lr": [0.1 / (i + 1) for i in range(12)]})


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adamw_matches_torch(weight_decay):
    ps, qs = twin_params()
    kw = dict(lr=0.01, betas=(0.9, 0.99), eps=1e-5, weight_decay=weight_decay)
    betas = [(0.95 - 0.01 * i, 0.99) for i in range(12)]  # cyclical momentum moves beta1
    run_both(AdamW(ps, **kw), torch.optim.AdamW(qs, **kw), ps, qs,
             hypers={"lr": [0.01 * (1 + i) for i in range(12)], "betas": betas})


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_state_loads_into_torch_and_back(name):
    ps, qs = twin_params()
    if name == "adamw":
        ours = adamw(ps, lr=0.01)
        ref = torch.optim.AdamW(qs, lr=0.01, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)
        keys = {"step", "exp_avg", "exp_avg_sq"}
    else:
        ours, ref = SGD(ps, lr=0.01), torch.optim.SGD(qs, lr=0.01, momentum=0.9)
        keys = {"momentum_buffer"}
    run_both(ours, ref, ps, qs, n_steps=3)
    # (deep copies: load_state_dict keeps the tensors it is given, and the two must not share)
    if name == "adamw":  # torch's SGD wants its own group keys (dampening, nesterov, ...)
        ref.load_state_dict(copy.deepcopy(ours.state_dict()))  # ours resumed by torch
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))  # torch's resumed by ours
    run_both(ours, ref, ps, qs, n_steps=4)
    assert set(ours.state[ps[0]]) == keys
    if name == "adamw":
        assert ours.state[ps[0]]["step"].item() == 7


def test_torch_schedulers_accept_them():
    ps, _ = twin_params()
    opt = SGD(ps, lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] != 0.1 and "momentum" in opt.param_groups[0]


def test_bad_hyperparameters_are_refused():
    ps, _ = twin_params()
    with pytest.raises(ValueError, match=r"Received: lr=-1"):
        SGD(ps, lr=-1)
    with pytest.raises(ValueError, match=r"betas in \[0, 1\). Received: .*betas=\(1.0, 0.9\)"):
        AdamW(ps, lr=0.1, betas=(1.0, 0.9))
    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.zeros(3).to_sparse()
    with pytest.raises(ValueError, match="sparse gradients"):
        AdamW([p], lr=0.1).step()


def test_training_does_not_import_torch_dynamo():
    """The reason these optimizers exist: torch.optim's first call imports torch._dynamo (2 s)."""
    code = """
import sys
import torch
import torch.nn.functional as F
from convscope.optimizers import adamw, sgd
for make in (adamw, sgd):
    model = torch.nn.Linear(4, 2)
    opt = make(model.parameters(), lr=0.1)
    F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 2, (8,))).backward()
    opt.step()
    opt.zero_grad()
    opt.load_state_dict(opt.state_dict())
print("torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("make", [adamw, lambda p, lr: SGD(p, lr=lr)])
def test_step_takes_a_closure_like_torch(make):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    opt = make(model.parameters(), lr=0.1)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    first = opt.step(closure)
    assert first.requires_grad and opt.step(closure) < first
