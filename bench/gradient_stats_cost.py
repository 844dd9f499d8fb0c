"""What GradientStats costs: time per epoch with it over time without it.

The book's final model (simple_cnn with batchnorm, channels_last) on MNIST, bs 512, one-epoch
fit_one_cycle runs alternating with and without the callback in this one process, so both see
the same machine state. Prints each run and the ratio of the medians (target: < 1.05), for
wall time and for the process's CPU time.

    .venv/bin/python bench/gradient_stats_cost.py [--repeats 5] [--every 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from convscope import ChannelsLast, DataLoaders, GradientStats, Learner, mnist, simple_cnn


def epoch_time(dls: DataLoaders, stats: GradientStats | None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one epoch of fit_one_cycle."""
    torch.manual_seed(0)
    cbs = [ChannelsLast()] + ([stats] if stats else [])
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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    dls = DataLoaders.from_data(mnist(), bs=512, device=args.device)
    epoch_time(dls, None)  # warm-up: oneDNN picks its kernels on the first batches
    without, with_stats = [], []
    for i in range(args.repeats):
        without.append(epoch_time(dls, None))
        with_stats.append(epoch_time(dls, GradientStats(every=args.every)))
        print(f"repeat {i}: without {without[-1][0]:.2f}s wall / {without[-1][1]:.2f}s CPU, "
              f"with {with_stats[-1][0]:.2f}s wall / {with_stats[-1][1]:.2f}s CPU", flush=True)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, device {args.device}; every={args.every}")
    for k, what in enumerate(("wall", "CPU")):
        a = statistics.median(t[k] for t in without)
        b = statistics.median(t[k] for t in with_stats)
        print(f"{what} time per epoch, median of {args.repeats}: without {a:.2f}s, with "
              f"GradientStats {b:.2f}s, ratio {b / a:.3f} (target < 1.05)")


if __name__ == "__main__":
    main()
