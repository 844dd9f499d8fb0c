"""Thread count: time of a simple_cnn forward + backward step (bs 512, channels_last) with 1, 2,
... up to cores + 1 torch threads, alternating in this one process; medians of the rounds.

torch's default is one thread per core; `convscope train --nproc N` gives each process
cores // N threads. This shows what a thread more or fewer costs on the machine at hand.

    .venv/bin/python bench/threads.py [--rounds 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from convscope import simple_cnn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    default = torch.get_num_threads()
    model = simple_cnn().to(memory_format=torch.channels_last)
    x = torch.randn(512, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (512,))

    def step() -> None:
        F.cross_entropy(model(x), y).backward()

    times: dict[int, list[float]] = {n: [] for n in range(1, cores + 2)}
    for n in times:  # warm-up at each count
        torch.set_num_threads(n)
        step()
    for _ in range(args.rounds):
        for n in times:
            torch.set_num_threads(n)
            start = time.perf_counter()
            for _ in range(4):
                step()
            times[n].append((time.perf_counter() - start) / 4)
    best = min(times, key=lambda n: statistics.median(times[n]))
    print(f"{cores} cores, torch's default {default} threads")
    for n, ts in times.items():
        print(f"{n} thread(s): {statistics.median(ts) * 1e3:.1f} ms per step"
              + (" (fastest)" if n == best else ""))


if __name__ == "__main__":
    main()
