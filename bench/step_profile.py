"""Where a training step's time goes, and how close an epoch comes to the machine's ceiling.

1. The ceiling: a 2048 x 2048 matmul's GFLOP/s in fp32 and bf16 on this machine's threads.
2. An epoch of simple_cnn at the default recipe's batch size (256; `--bs`), channels_last,
   fit_one_cycle, no statistics callbacks, timed, and
   its useful work (forward MACs from the model summary x 2 FLOPs x 3 for forward and
   backward, per image) as a fraction of the fp32 and bf16 ceilings.
3. torch.profiler over 30 training steps, CPU time grouped by what it is: convolution,
   batchnorm, ReLU, the optimizer step, the data (indexing and normalising a batch), the loss,
   and the rest, per step and as shares. An op counts as what the nearest event around it is
   (the ops inside convscope's FastBatchNorm2d count as batchnorm), else as what its name says.

    .venv/bin/python bench/step_profile.py [--steps 30] [--bs 256]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from convscope import ChannelsLast, DataLoaders, Learner, mnist, simple_cnn
from convscope.model_summary import summary
from convscope.recipes import RECIPES

CATEGORIES = (  # (category, substrings of op and event names), first match wins
    ("convolution", ("convolution", "conv2d", "mkldnn_conv")),
    ("batchnorm", ("batch_norm", "batchstatsnorm")),
    ("ReLU", ("relu", "threshold")),
    ("optimizer", ("_foreach", "lerp", "addcdiv", "addcmul_", "optimizer.step")),
    ("data", ("index", "randperm", "addcmul", "to_copy", "_to_copy")),
    ("loss", ("log_softmax", "nll_loss", "cross_entropy")),
)


def ceiling(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def category(name: str) -> str:
    low = name.lower()
    return next((c for c, keys in CATEGORIES if any(k in low for k in keys)), "other")


def event_category(evt) -> str:
    """The category of the nearest event around an op that has one, else the op's own: the
    ops inside convscope's FastBatchNorm2d (an autograd Function, forward and backward) count as
    batchnorm, those of an optimizer step as the optimizer, whatever their names."""
    outer = evt.cpu_parent
    while outer is not None:
        c = category(outer.name)
        if c != "other":
            return c
        outer = outer.cpu_parent
    return category(evt.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--bs", type=int, default=RECIPES["fast"].settings["bs"],
                        help="training batch size")
    args = parser.parse_args()
    fp32, bf16 = ceiling(torch.float32), ceiling(torch.bfloat16)
    print(f"matmul 2048^2, {torch.get_num_threads()} threads: fp32 {fp32:.0f} GFLOP/s, bf16 "
          f"{bf16:.0f} GFLOP/s")
    data = mnist()
    dls = DataLoaders.from_data(data, bs=args.bs)
    macs = summary(simple_cnn(), (1, 28, 28)).total_macs
    flops_per_image = 2 * macs * 3
    epoch_flops = flops_per_image * len(data.y_train)
    times = []
    for _ in range(2):
        torch.manual_seed(0)
        learn = Learner(dls, simple_cnn(), cbs=[ChannelsLast()], progress=False)
        t = time.perf_counter()
        learn.fit_one_cycle(1, 0.03)
        times.append(time.perf_counter() - t)
    epoch = min(times)
    rate = epoch_flops / epoch / 1e9
    print(f"training FLOPs: {flops_per_image / 1e6:.2f} MFLOP per image (forward MACs {macs:,} "
          f"x 2 x 3), {epoch_flops / 1e9:.1f} GFLOP an epoch; epoch {epoch:.2f} s (best of 2, "
          f"validation included): {rate:.1f} GFLOP/s = {rate / fp32:.1%} of the fp32 ceiling, "
          f"{rate / bf16:.1%} of bf16's")

    torch.manual_seed(0)
    learn = Learner(dls, simple_cnn(), cbs=[ChannelsLast()], progress=False)
    from convscope.callback import Callback, CancelFitException

    class Stop(Callback):
        def after_batch(self):
            if self.learn.training and self.learn.train_iter + 1 >= 5 + args.steps:
                raise CancelFitException

    learn.fit(1, 1e-3, cbs=[Stop()])  # warm-up: kernels chosen, the optimizer made
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        learn.fit(1, 1e-3, cbs=[Stop()])
    steps = 5 + args.steps
    totals: dict[str, float] = {}
    for evt in prof.events():
        if evt.name.startswith("aten::") or evt.name.startswith("mkldnn"):
            c = event_category(evt)
            totals[c] = totals.get(c, 0.0) + evt.self_cpu_time_total / 1e3  # ms
    whole = sum(totals.values())
    print(f"per training step at bs {args.bs} (self CPU time of aten ops over {steps} steps, "
          f"ms per step):")
    for c, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {c:<12} {ms / steps:7.2f} ms  {ms / whole:6.1%}")


if __name__ == "__main__":
    main()
