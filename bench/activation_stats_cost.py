"""What ActivationStats (histograms on) costs: time per epoch with it over time without it.

The book's final model (simple_cnn with batchnorm) on full MNIST, bs 512, one-epoch
fit_one_cycle runs alternating with and without the callback in this one process, so both see
the same machine state. Prints each run and the ratio of the medians (target: <= 1.10), for
wall time and for the process's CPU time (which a virtual machine's steal time does not
inflate).

    .venv/bin/python bench/activation_stats_cost.py [--repeats 5] [--sample 8192]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from convscope import ActivationStats, ChannelsLast, DataLoaders, Learner, mnist, simple_cnn


def epoch_time(dls: DataLoaders, stats: ActivationStats | None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one epoch of fit_one_cycle."""
    torch.manual_seed(0)
    cbs = [ChannelsLast()] + ([stats] if stats else [])
    learn = Learner(dls, simple_cnn(), cbs=cbs, progress=False)
    wall, cpu = time.perf_counter(), time.process_time()
    learn.fit_one_cycle(1, 1e-2)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sample", type=int, default=8192, help="0 for exact statistics")
    parser.add_argument("--every", type=int, default=1)
    args = parser.parse_args()
    dls = DataLoaders.from_data(mnist(), bs=512)
    epoch_time(dls, None)  # warm-up: oneDNN picks its kernels on the first batches
    without, with_stats = [], []
    for i in range(args.repeats):
        without.append(epoch_time(dls, None))
        with_stats.append(epoch_time(dls, ActivationStats(sample=args.sample or None,
                                                          every=args.every)))
        print(f"repeat {i}: without {without[-1][0]:.2f}s wall / {without[-1][1]:.2f}s CPU, "
              f"with {with_stats[-1][0]:.2f}s wall / {with_stats[-1][1]:.2f}s CPU", flush=True)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; sample={args.sample or 'all'}, every={args.every}")
    for k, what in enumerate(("wall", "CPU")):
        a = statistics.median(t[k] for t in without)
        b = statistics.median(t[k] for t in with_stats)
        print(f"{what} time per epoch, median of {args.repeats}: without {a:.2f}s, with "
              f"ActivationStats {b:.2f}s, ratio {b / a:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
