"""convscope's BatchNorm2d against torch's nn.BatchNorm2d on the CPU, side by side.

1. Per layer: forward and backward (batchnorm then ReLU, as in simple_cnn's blocks) at each of
   simple_cnn's batchnorm inputs for the batch size (channels_last, float32), alternating the
   two, medians; says which layers take convscope's own path.
2. Per epoch: one epoch of fit_one_cycle at the default recipe's batch size with simple_cnn
   built with each, alternating, medians, and the ratio (convscope / torch).

    .venv/bin/python bench/batchnorm.py [--bs 256] [--repeats 4]
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
from convscope.batchnorm import uses_fast_path
from convscope.recipes import RECIPES

FAST = RECIPES["fast"].settings


def with_torch_batchnorm(model: nn.Module) -> nn.Module:
    """The model with each convscope BatchNorm2d swapped for an nn.BatchNorm2d of its size."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is not nn.BatchNorm2d and isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, nn.BatchNorm2d(child.num_features))
    return model



def per_layer(bs: int) -> None:
    shapes = simple_cnn_inputs(nn.BatchNorm2d, bs)
    print(f"per layer, forward + backward of batchnorm and ReLU, bs {bs}, median ms:")
    for ours, shape in shapes:
        ours.train()
        theirs = nn.BatchNorm2d(shape[1])
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()
        grad = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        runs = {"torch": lambda m=theirs, x=x, g=grad: torch.relu(m(x)).backward(g),
                "convscope": lambda m=ours, x=x, g=grad: torch.relu(m(x)).backward(g)}
        for fn in runs.values():  # warm-up
            median_ms(fn, 3)
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(10):
            for k, fn in runs.items():
                times[k].append(median_ms(fn, 5))
        a, b = (statistics.median(times[k]) for k in ("torch", "convscope"))
        path = "own path" if uses_fast_path(ours, x) else "torch's kernel"
        print(f"  {str(shape):<18} torch {a:6.3f}  convscope {b:6.3f}  ratio {b / a:.2f}  "
              f"({path})")


def epoch(dls: DataLoaders, torch_bn: bool) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one epoch."""
    torch.manual_seed(0)
    model = with_torch_batchnorm(simple_cnn()) if torch_bn else simple_cnn()
    learn = Learner(dls, model, cbs=[ChannelsLast()], progress=False)
    wall, cpu = time.perf_counter(), time.process_time()
    learn.fit_one_cycle(1, FAST["lr"])
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bs", type=int, default=FAST["bs"])
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    print(f"machine {platform.machine()} ({platform.processor() or 'cpu'}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    per_layer(args.bs)
    dls = DataLoaders.from_data(mnist(), bs=args.bs)
    epoch(dls, False)  # warm-up
    times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for i in range(args.repeats):
        for torch_bn in (True, False):
            times[torch_bn].append(epoch(dls, torch_bn))
        print(f"repeat {i}: epoch with torch's batchnorm {times[True][-1][0]:.2f}s wall / "
              f"{times[True][-1][1]:.2f}s CPU, with convscope's {times[False][-1][0]:.2f}s / "
              f"{times[False][-1][1]:.2f}s", flush=True)
    for k, what in enumerate(("wall", "CPU")):
        a = statistics.median(t[k] for t in times[True])
        b = statistics.median(t[k] for t in times[False])
        print(f"epoch at bs {args.bs}, {what} time, median of {args.repeats}: torch's batchnorm "
              f"{a:.2f}s, convscope's {b:.2f}s, ratio {b / a:.3f} (convscope / torch)")


if __name__ == "__main__":
    main()
