"""What this machine does fast in reduced precision, and the faults to steer around.

bf16 and fp16 speed on a CPU depends on its instructions, not on the word "cpu": a CPU with
AVX-512 BF16 (or AMX) runs bf16 matrix work natively (a 2048x2048 matmul 2.4x faster than fp32
on the project's AVX-512 machine, though simple_cnn's epoch gains nothing there:
bench/precision.py), while one with AVX2 alone emulates it and is about 3x slower than fp32.
fp16 is native only with AVX-512 FP16 or AMX-FP16 (emulated: 6-8x slower than fp32). The run
log names the path a run took (`describe`), and the CLI refuses fp16 on a CPU that would
emulate it (`cpu_fp16_refusal`).

The one known fault (torch 2.13.0 and 2.14.1 on CPUs with native bf16; oneDNN's bf16 path):

    Under CPU bf16 autocast, a Conv2d whose input is smaller than its kernel (a 3x3 kernel,
    stride 2, padding 1 on a 1x1 input: what simple_cnn's last conv sees on 16x16 images)
    intermittently returns non-finite weight gradients: 54 of 200 random trials with torch
    2.13.0+cpu, 6 of 200 with 2.14.1 (AMD EPYC, avx512_bf16). Inputs of 2x2 and larger, and
    stride 1, gave none in 400 trials. The forward output is finite. Repro:

        x = torch.randn(32, 64, 1, 1)
        conv = torch.nn.Conv2d(64, 4, 3, 2, 1, bias=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(x)
        (out.float() * torch.randn_like(out.float())).sum().backward()
        torch.isfinite(conv.weight.grad).all()   # False in about 1 trial in 4

MixedPrecision therefore runs such convolutions in float32 (`runs_in_fp32`); they are the
smallest of a model (1x1 or 2x2 inputs), so this costs next to nothing (bench/precision.py).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _cpu_probe(name: str) -> bool:
    probe = getattr(torch.cpu, name, None)  # private helpers: absent in some torch versions
    try:
        return bool(probe()) if probe is not None else False
    except Exception:
        return False


def cpu_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX-512 BF16 or AMX)."""
    return (_cpu_probe("_is_avx512_bf16_supported") or _cpu_probe("_is_amx_tile_supported")
            or bool({"avx512_bf16", "amx_bf16"} & cpu_flags()))


def cpu_native_fp16() -> bool:
    """True when the CPU has fp16 arithmetic instructions (AVX-512 FP16 or AMX-FP16)."""
    return _cpu_probe("_is_amx_fp16_supported") or bool({"avx512_fp16", "amx_fp16"} & cpu_flags())


def cpu_capability() -> str:
    """torch's name for the vector instructions its CPU kernels use (AVX2, AVX512, ...)."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:
        return "unknown"


def cpu_fp16_refusal() -> str | None:
    """Why `--precision fp16` is refused on this CPU, or None where it has fp16 instructions.

    (The Python API's MixedPrecision("fp16") still runs, with a warning: useful to check a
    run's grad-scaler path, not to speed one up.)"""
    if cpu_native_fp16():
        return None
    return (f"--precision fp16: this CPU ({cpu_capability()}) has no fp16 instructions, so "
            f"fp16 would be emulated, several times slower than fp32. Use "
            f"{'--precision bf16 (native here) or ' if cpu_native_bf16() else ''}"
            f"--precision fp32 on this CPU, or "
            f"--device cuda.")


def describe(device: torch.device, precision: str) -> str:
    """The arithmetic a run uses, for its log: the precision and, on a CPU, whether the
    CPU does it natively."""
    if precision == "fp32":
        what = "fp32"
    else:
        what = f"{precision} mixed precision (autocast; weights and optimizer in fp32)"
    if device.type != "cpu":
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
        return f"precision: {what} on {device} ({name})"
    cap = cpu_capability()
    if precision == "bf16":
        if cpu_native_bf16():
            how = (f"{cap} with native bf16; convolutions on inputs smaller than their kernel "
                   f"run in fp32 (a torch fault, see convscope.precision)")
        else:
            how = f"{cap}, no bf16 instructions: emulated, expect it slower than fp32"
        return f"precision: {what} on cpu ({how})"
    if precision == "fp16":
        how = "native fp16" if cpu_native_fp16() else "no fp16 instructions: emulated, slow"
        return f"precision: {what} on cpu ({cap}, {how})"
    return f"precision: {what} on cpu ({cap})"


def runs_in_fp32(module: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether a convolution must leave bf16 autocast for this input: its input is smaller
    than its kernel in height or width (the fault above)."""
    kh, kw = module.kernel_size[-2:]
    return x.shape[-2] < kh or x.shape[-1] < kw


class SmallConvGuard:
    """Runs every Conv2d of `model` whose input is smaller than its kernel in float32 while
    CPU autocast is on: a pre-forward hook leaves autocast and casts the input to float32, a
    forward hook returns to it. The output is then float32, which the next layers take as
    autocast would any input. `fp32_convs` names the convs it moved.

    >>> conv = torch.nn.Conv2d(2, 3, 3, stride=2, padding=1)
    >>> guard = SmallConvGuard(conv)
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     conv(torch.randn(1, 2, 8, 8)).dtype, conv(torch.randn(1, 2, 1, 1)).dtype
    (torch.bfloat16, torch.float32)
    >>> guard.remove()
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.fp32_convs: set[str] = set()
        self._open: list[tuple[torch.nn.Module, torch.autocast]] = []
        self._handles = []
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Conv2d):
                self._handles += [m.register_forward_pre_hook(self._enter(name)),
                                  m.register_forward_hook(self._exit)]

    def _enter(self, name: str):
        def hook(module: torch.nn.Module, args):
            x = args[0]
            if not (torch.is_autocast_enabled("cpu") and runs_in_fp32(module, x)):
                return None
            ctx = torch.autocast("cpu", enabled=False)
            ctx.__enter__()
            self._open.append((module, ctx))
            self.fp32_convs.add(name or type(module).__name__)
            return (x.float(), *args[1:])
        return hook

    def _exit(self, module: torch.nn.Module, args, output) -> None:
        if self._open and self._open[-1][0] is module:
            self._open.pop()[1].__exit__(None, None, None)

    def unwind(self) -> None:
        """Leave any float32 section a forward left open by raising inside a conv."""
        while self._open:
            self._open.pop()[1].__exit__(None, None, None)

    def remove(self) -> None:
        self.unwind()
        for h in self._handles:
            h.remove()
        self._handles = []
