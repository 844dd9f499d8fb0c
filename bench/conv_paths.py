"""convscope's Conv2d (fastconv.FastConv2d) against torch's nn.Conv2d on the CPU, side by side.

1. Per layer: forward and backward at each of simple_cnn's conv inputs for the batch size
   (channels_last, float32, the input needing its gradient except at the first layer),
   alternating the two, medians; says which path convscope's takes.
2. The input gradient alone of a 3x3 stride-2 conv, oneDNN's against the phase path, over a
   range of channel counts and sizes: where the phase path's channel limit comes from.
3. Per epoch: one epoch of the book's recipe (fit_one_cycle at lr 0.1, batch size 512 unless
   --bs) with simple_cnn's convs as torch's and as convscope's, alternating, medians, ratio.

    .venv/bin/python bench/conv_paths.py [--bs 512] [--repeats 4]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from _layers import median_ms, simple_cnn_inputs  # bench/, the script's own folder
from torch import nn

from convscope import ChannelsLast, DataLoaders, Learner, mnist, simple_cnn
from convscope.fastconv import FastConv2d, path, phase_input_grad
from convscope.recipes import RECIPES

BOOK = RECIPES["book"].settings
CL = torch.channels_last


def with_torch_convs(model: nn.Module) -> nn.Module:
    """The model with each FastConv2d computing as nn.Conv2d does (same parameters)."""
    for m in model.modules():
        if type(m) is FastConv2d:
            m.forward = nn.Conv2d.forward.__get__(m)
    return model



def side_by_side(runs: dict, rounds: int = 10) -> dict[str, float]:
    for fn in runs.values():  # warm-up
        median_ms(fn, 3)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            times[k].append(median_ms(fn, 5))
    return {k: statistics.median(v) for k, v in times.items()}


def per_layer(bs: int) -> None:
    shapes = simple_cnn_inputs(nn.Conv2d, bs)
    print(f"per layer, forward + backward of the conv, bs {bs}, median ms:")
    for i, (ours, shape) in enumerate(shapes):
        theirs = with_torch_convs(FastConv2d(ours.in_channels, ours.out_channels,
                                             ours.kernel_size, ours.stride, ours.padding,
                                             bias=ours.bias is not None))
        theirs.load_state_dict(ours.state_dict())
        ours, theirs = ours.to(memory_format=CL), theirs.to(memory_format=CL)
        x = torch.randn(shape).contiguous(memory_format=CL).requires_grad_(i > 0)
        grad = torch.randn_like(ours(x))
        t = side_by_side({"torch": lambda m=theirs, x=x, g=grad: m(x).backward(g),
                          "convscope": lambda m=ours, x=x, g=grad: m(x).backward(g)})
        print(f"  {str(shape):<18} torch {t['torch']:6.3f}  convscope {t['convscope']:6.3f}  "
              f"ratio {t['convscope'] / t['torch']:.2f}  ({path(ours, x)} path)")


def input_grads() -> None:
    print("input gradient of a 3x3 stride-2 conv, oneDNN against the phase path, median ms:")
    for bs, ci, co, size in [(512, 4, 8, 14), (512, 8, 16, 14), (64, 8, 16, 14),
                             (128, 8, 16, 32), (512, 3, 16, 32), (512, 16, 32, 7),
                             (128, 16, 32, 16), (512, 32, 64, 4), (128, 64, 128, 4)]:
        x = torch.randn(bs, ci, size, size).contiguous(memory_format=CL)
        w = torch.randn(co, ci, 3, 3).contiguous(memory_format=CL)
        g = torch.randn_like(nn.functional.conv2d(x, w, stride=2, padding=1))
        t = side_by_side({
            "onednn": lambda g=g, x=x, w=w: torch.nn.grad.conv2d_input(x.shape, w, g, 2, 1),
            "phase": lambda g=g, w=w, s=size: phase_input_grad(g, w, s, s)}, rounds=6)
        print(f"  bs {bs:<4} {ci:>3} -> {co:<4} {size:>2}x{size:<2} oneDNN {t['onednn']:6.3f}  "
              f"phase {t['phase']:6.3f}  ratio {t['phase'] / t['onednn']:.2f}")


def epoch(dls: DataLoaders, torch_convs: bool) -> float:
    torch.manual_seed(0)
    model = with_torch_convs(simple_cnn()) if torch_convs else simple_cnn()
    learn = Learner(dls, model, cbs=[ChannelsLast()], progress=False)
    start = time.perf_counter()
    learn.fit_one_cycle(1, BOOK["lr"])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bs", type=int, default=BOOK["bs"])
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    print(f"machine {platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    per_layer(args.bs)
    input_grads()
    dls = DataLoaders.from_data(mnist(), bs=args.bs)
    epoch(dls, False)  # warm-up
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(args.repeats):
        for torch_convs in (True, False):
            times[torch_convs].append(epoch(dls, torch_convs))
        print(f"repeat {i}: epoch with torch's convs {times[True][-1]:.2f}s, with convscope's "
              f"{times[False][-1]:.2f}s", flush=True)
    a, b = statistics.median(times[True]), statistics.median(times[False])
    print(f"epoch at bs {args.bs}, median of {args.repeats}: torch's convs {a:.2f}s, "
          f"convscope's {b:.2f}s, ratio {b / a:.3f} (convscope / torch)")


if __name__ == "__main__":
    main()
