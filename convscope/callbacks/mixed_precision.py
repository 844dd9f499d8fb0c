"""MixedPrecision: run the forward pass and the loss in bfloat16 or float16.

bf16 (CPU and CUDA) keeps float32's range, so it needs nothing else. fp16 does not: small
gradients underflow, so a GradScaler multiplies the loss before backward, unscales the
gradients before anyone looks at them, and skips the steps whose gradients overflowed. Weights,
optimizer state and the Recorder's losses stay float32 throughout.

On a CPU, bf16 and fp16 are fast only where the CPU has the instructions for them
(convscope.precision); elsewhere they are emulated, slower than float32. fp16 without fp16
instructions still runs here, with a warning, to check a run's grad-scaler path; the CLI
refuses it there.

On the CPU, bf16 autocast has a fault for convolutions whose input is smaller than their kernel
(non-finite weight gradients, intermittently; convscope.precision describes it): MixedPrecision
runs those convolutions in float32 (precision.SmallConvGuard).
"""

from __future__ import annotations

import warnings

import torch

from convscope.callback import Callback
from convscope.errors import UsageError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class MixedPrecision(Callback):
    """Reached as `learn.mixed_precision`.

    Args:
        dtype: "bf16" or "fp16".
        init_scale: fp16's first loss scale (torch's default 2**16); the scaler halves it after
            each step whose gradients overflowed, and doubles it after 2000 clean steps.
    """

    order = 55  # after the Recorder has read the (unscaled) loss in after_loss

    def __init__(self, dtype: str = "bf16", init_scale: float = 2.0**16) -> None:
        if dtype not in DTYPES:
            raise UsageError(f"Unknown mixed precision dtype. Received: {dtype!r}. Choose one "
                             f"of {sorted(DTYPES)}.")
        self.dtype, self.init_scale = dtype, init_scale
        self._ctx = None
        self.scaler = None
        self._saved_scaler: dict | None = None
        self._guard = None
        self.fp32_convs: set[str] = set()  # the convs that ran in float32, by name

    def before_fit(self) -> None:
        learn = self.learn
        self.device_type = learn.dls.device.type
        self.scaler = None
        if self.device_type == "cpu" and self.dtype == "bf16":
            from convscope.precision import SmallConvGuard

            self._guard = SmallConvGuard(learn.model)
            self.fp32_convs = self._guard.fp32_convs
        if self.dtype == "fp16":
            from convscope.precision import cpu_native_fp16

            if self.device_type != "cuda" and not cpu_native_fp16():
                warnings.warn(f"fp16 mixed precision on {learn.dls.device}: it runs, but this "
                              f"CPU has no fp16 instructions, so it is several times slower "
                              f"than float32 (6x on an AVX2 CPU, 8x on an AVX-512 one). Use "
                              f"bf16 or float32 there.", stacklevel=2)
            self.scaler = torch.amp.GradScaler(self.device_type, init_scale=self.init_scale)
            if self._saved_scaler is not None:  # loaded by learn.load() before this fit
                self.scaler.load_state_dict(self._saved_scaler)
                self._saved_scaler = None
            learn.grad_scaler = self.scaler
            learn.backward = self._scaled_backward  # instance attributes shadow the methods
            learn.step = self._scaled_step

    def state_dict(self) -> dict | None:
        """fp16: the grad scaler's loss scale and growth count, so a resumed run scales as
        the uninterrupted one would. bf16 holds no state."""
        if self.scaler is None:
            return None
        return {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "scaler" not in state:
            return
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        else:
            self._saved_scaler = state["scaler"]

    def _scaled_backward(self) -> None:
        learn = self.learn
        self.scaler.scale(learn.loss).backward()
        self.scaler.unscale_(learn.opt)  # so after_backward sees the true gradients

    def _scaled_step(self) -> None:
        self.scaler.step(self.learn.opt)  # skipped when a gradient overflowed
        self.scaler.update()

    def before_batch(self) -> None:
        self._ctx = torch.autocast(self.device_type, dtype=DTYPES[self.dtype])
        self._ctx.__enter__()

    def _leave(self) -> None:
        if self._guard is not None:  # a forward that raised inside an fp32 conv
            self._guard.unwind()
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None

    def after_loss(self) -> None:
        self._leave()  # backward runs outside autocast, as torch recommends

    def after_batch(self) -> None:
        self._leave()  # a batch cancelled before its loss

    def after_fit(self) -> None:
        self._leave()
        if self._guard is not None:
            self._guard.remove()
            self._guard = None
        learn = self.learn
        for name in ("backward", "step", "grad_scaler"):
            learn.__dict__.pop(name, None)
