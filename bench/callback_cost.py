"""What a statistics callback costs: time per epoch with it over time without it.

The book's final model (simple_cnn with batchnorm, channels_last) on full MNIST at the default
recipe's batch size (256; `--bs`), one-epoch fit_one_cycle runs alternating with and without
the callback in this one process, so both see the same machine state. Prints each run and the
ratio of the medians, for wall time and for the process's CPU time (which a virtual machine's
steal time does not inflate).
Targets: ActivationStats <= 1.10, GradientStats < 1.05.

    .venv/bin/python bench/callback_cost.py --callback ActivationStats [--sample 8192]
    .venv/bin/python bench/callback_cost.py --callback GradientStats [--every 1]
    (both: [--repeats 5] [--device cpu])
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from convscope import (
    ActivationStats,
    ChannelsLast,
    DataLoaders,
    GradientStats,
    Learner,
    mnist,
    simple_cnn,
)
from convscope.recipes import RECIPES

TARGETS = {"ActivationStats": 1.10, "GradientStats": 1.05}


def epoch_time(dls: DataLoaders, callback) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one epoch of fit_one_cycle."""
    torch.manual_seed(0)
    cbs = [ChannelsLast()] + ([callback] if callback is not None else [])
    learn = Learner(dls, simple_cnn(), cbs=cbs, progress=False)
    if dls.device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    learn.fit_one_cycle(1, 1e-2)
    if dls.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callback", choices=sorted(TARGETS), default="ActivationStats")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sample", type=int, default=8192,
                        help="ActivationStats: 0 for exact statistics")
    parser.add_argument("--every", type=int, default=1, help="record one batch in N")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bs", type=int, default=RECIPES["fast"].settings["bs"],
                        help="training batch size")
    args = parser.parse_args()

    def make():
        if args.callback == "GradientStats":
            return GradientStats(every=args.every)
        return ActivationStats(sample=args.sample or None, every=args.every)

    dls = DataLoaders.from_data(mnist(), bs=args.bs, device=args.device)
    epoch_time(dls, None)  # warm-up: oneDNN picks its kernels on the first batches
    without, with_cb = [], []
    for i in range(args.repeats):
        without.append(epoch_time(dls, None))
        with_cb.append(epoch_time(dls, make()))
        print(f"repeat {i}: without {without[-1][0]:.2f}s wall / {without[-1][1]:.2f}s CPU, "
              f"with {with_cb[-1][0]:.2f}s wall / {with_cb[-1][1]:.2f}s CPU", flush=True)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, device {args.device}, bs {args.bs}; {args.callback}, "
          f"every={args.every}")
    for k, what in enumerate(("wall", "CPU")):
        a = statistics.median(t[k] for t in without)
        b = statistics.median(t[k] for t in with_cb)
        print(f"{what} time per epoch, median of {args.repeats}: without {a:.2f}s, with "
              f"{args.callback} {b:.2f}s, ratio {b / a:.3f} (target <= "
              f"{TARGETS[args.callback]:.2f})")


if __name__ == "__main__":
    main()
