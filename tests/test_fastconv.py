"""convscope's Conv2d computes what nn.Conv2d does, on each of its paths; training keeps freed
memory for reuse (allocator.kept_memory)."""

import resource
import subprocess
import sys

import pytest
import torch
from torch import nn

from convscope import allocator, fastconv, simple_cnn
from convscope.fastconv import FastConv2d, path
from convscope.model_summary import summary

CL = torch.channels_last


def run(conv: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    y = conv(x)
    y.backward(grad)
    grads = [conv.weight.grad] + ([conv.bias.grad] if conv.bias is not None else [])
    return [y, x.grad, *grads]


@pytest.mark.parametrize("spec,expected", [
    # (in, out, kernel, stride, padding, bias, input shape N, H, W)
    ((8, 16, 3, 2, 1, False, (6, 14, 14)), "phase"),  # simple_cnn's second conv
    ((8, 5, 3, 2, 1, True, (3, 7, 9)), "phase"),  # odd and unequal sides
    ((3, 4, 3, 2, 1, True, (2, 5, 4)), "phase"),
    ((16, 8, 3, 2, 1, False, (2, 14, 14)), "torch"),  # 16 channels: oneDNN is faster
    ((8, 16, 3, 1, 1, False, (2, 14, 14)), "torch"),  # stride 1
    ((64, 10, 3, 2, 1, False, (5, 2, 2)), "matmul"),  # simple_cnn's last conv: 2x2 -> 1x1
    ((4, 3, 3, 2, 1, True, (2, 1, 1)), "matmul"),
    ((2, 3, 5, 4, 2, True, (2, 4, 4)), "matmul"),  # the window is wider than the input
    ((2, 3, 3, 3, 1, True, (2, 3, 3)), "matmul"),  # the input's last row is never seen
])
def test_each_path_matches_nn_conv2d(spec, expected, monkeypatch):
    monkeypatch.setattr(fastconv, "MIN_PHASE_SIZE", 0)  # small inputs, to keep the test quick
    ci, co, k, s, p, bias, (n, h, w) = spec
    torch.manual_seed(0)
    ref = nn.Conv2d(ci, co, k, s, p, bias=bias)
    ours = FastConv2d(ci, co, k, s, p, bias=bias)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(n, ci, h, w).contiguous(memory_format=CL).requires_grad_()
    assert path(ours, x) == expected
    want_out = ref(x)
    grad = torch.randn_like(want_out)
    got, want = run(ours, x, grad), run(ref, x, grad)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert got[1].is_contiguous(memory_format=CL)  # the input gradient keeps the layout


def test_paths_only_where_measured_faster():
    conv = FastConv2d(8, 16, 3, 2, 1)
    x = torch.randn(256, 8, 14, 14).contiguous(memory_format=CL)  # simple_cnn's at bs 256
    assert path(conv, x) == "torch"  # no gradient wanted for the input: nothing to gain
    x.requires_grad_()
    assert path(conv, x) == "phase"
    assert path(conv, x[:128]) == "torch"  # a smaller batch: oneDNN is the faster
    with torch.no_grad():
        assert path(conv, x) == "torch"
    assert path(conv, x.detach().contiguous().requires_grad_()) == "torch"  # NCHW
    assert path(conv, x.detach().double().contiguous(memory_format=CL).requires_grad_()) \
        == "torch"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert path(conv, x) == "torch"
    assert path(FastConv2d(8, 16, 3, 2, 1, padding_mode="reflect"), x) == "torch"
    assert path(FastConv2d(8, 16, 3, 2, 1, groups=2), x) == "torch"


def test_simple_cnn_uses_it_and_reads_as_the_book(monkeypatch):
    monkeypatch.setattr(fastconv, "MIN_PHASE_SIZE", 0)  # both paths, on a small batch
    model = simple_cnn()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5 and all(type(m) is FastConv2d for m in convs)
    types = [r["type"] for r in summary(model, (1, 28, 28)).rows]
    assert types.count("Conv2d") == 5 and types.count("BatchNorm2d") == 5
    assert not any(t.startswith("Fast") for t in types)
    # the same training step as torch's layers, to float32 rounding
    torch.manual_seed(0)
    ours = simple_cnn().to(memory_format=CL)
    ref = simple_cnn().to(memory_format=CL)
    ref.load_state_dict(ours.state_dict())
    for m in ref.modules():
        if type(m) is FastConv2d:
            m.forward = nn.Conv2d.forward.__get__(m)
    x = torch.randn(16, 1, 28, 28)
    second = ours[1][0]
    second.register_forward_pre_hook(lambda m, inp: paths.append(path(m, inp[0])))
    paths: list[str] = []
    for model in (ours, ref):
        nn.functional.cross_entropy(model(x), torch.arange(16) % 10).backward()
    assert paths == ["phase"]
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


def _faults_for_fresh_buffers(times: int = 8, mb: int = 8) -> int:
    """Minor page faults taken while allocating, filling and freeing an mb-MB buffer."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        torch.empty(mb << 18).fill_(1.0)  # mb MB of float32
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


@pytest.mark.skipif(not allocator.available(), reason="needs Linux with glibc")
def test_kept_memory_reuses_freed_buffers_and_gives_them_back():
    pages = (8 << 20) // resource.getpagesize()
    with allocator.kept_memory():
        # the first buffers are faulted in once, until freed ones come back to be reused
        _faults_for_fresh_buffers(12)
        with allocator.kept_memory():  # nested: still kept
            kept = _faults_for_fresh_buffers()
        # most of 8 fresh 8 MB buffers reuse freed memory (without: each is faulted in anew)
        assert kept <= 2 * pages, (kept, pages)
        # 24 MB: under the 32 MB that glibc before 2.35 allows as mmap threshold
        buffer = torch.empty(24 << 18).fill_(1.0)
        peak = _rss()
        del buffer
        held = _rss()
    after = _rss()
    assert peak - held <= 4 << 20, (peak, held)  # kept in the process for the next batch
    assert peak - after >= 16 << 20, (peak, after)  # returned on leaving the fit


AFTER_A_FIT = """
import resource, torch
from convscope import allocator
with allocator.kept_memory():
    pass
x = torch.randn(512, 1, 28, 28).contiguous(memory_format=torch.channels_last)
w = torch.randn(8, 1, 5, 5)
def faults(times):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        torch.nn.functional.conv2d(x, w, None, 2, 2)  # a 3.2 MB output
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults(4)
print(faults(20))
"""


@pytest.mark.skipif(not allocator.available(), reason="needs Linux with glibc")
def test_buffers_are_still_reused_after_a_fit():
    # In a fresh process, so that nothing other tests left in the heap decides it. After the
    # fit, a convolution's output is reused from one call to the next, as under glibc's own
    # adjustment of its thresholds; with glibc's starting values set instead, every output
    # would be faulted in anew (about 2,400 faults a call here, each conv 3-6x slower).
    out = subprocess.run([sys.executable, "-c", AFTER_A_FIT], capture_output=True, text=True,
                         check=True)
    one_output = 512 * 8 * 14 * 14 * 4 // resource.getpagesize()
    assert int(out.stdout) <= one_output, (out.stdout, one_output)


class _RecordingLibc:
    """Stands in for glibc: records what kept_memory asks of malloc."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


def test_kept_memory_sets_glibcs_own_values_after_and_leaves_the_users_alone(monkeypatch):
    libc = _RecordingLibc()
    monkeypatch.setattr(allocator, "_glibc", lambda: libc)
    for name in (*allocator.USER_SETTINGS, "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    with allocator.kept_memory():
        assert libc.calls == [("mallopt", p, v) for p, v in allocator.KEPT.items()]
    assert libc.calls[len(allocator.KEPT):] == [
        *[("mallopt", p, v) for p, v in allocator.AFTER.items()], ("malloc_trim", 0)]
    # the thresholds after a fit are those glibc's adjustment reaches: mmap 32 MiB, trim twice
    assert allocator.AFTER[allocator.M_MMAP_THRESHOLD] == 32 << 20
    assert allocator.AFTER[allocator.M_TRIM_THRESHOLD] == 64 << 20

    for env, value in (("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=4096"),
                       ("MALLOC_MMAP_THRESHOLD_", "65536")):
        libc.calls.clear()
        monkeypatch.setenv(env, value)
        assert not allocator.available() and allocator.user_settings() == [env]
        with allocator.kept_memory():
            pass
        assert libc.calls == []  # the user's own settings stand
        monkeypatch.delenv(env)
