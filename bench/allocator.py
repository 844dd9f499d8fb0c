"""Training with freed memory kept in the process (allocator.kept_memory, what Learner.fit
does) against glibc's default of giving it back, side by side.

One epoch of the book's recipe (fit_one_cycle at lr 0.1, batch size 512 unless --bs) each way,
alternating, in one process: wall time, the minor page faults and the kernel (system) CPU time
the epoch took, and peak RSS growth. Medians and the ratio (kept / default).

    .venv/bin/python bench/allocator.py [--bs 512] [--repeats 4]
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import time

import torch

from convscope import ChannelsLast, DataLoaders, Learner, allocator, mnist, simple_cnn
from convscope.recipes import RECIPES

BOOK = RECIPES["book"].settings
KEPT = allocator.kept_memory


def epoch(dls: DataLoaders, kept: bool) -> tuple[float, int, float]:
    """(wall seconds, minor page faults, system CPU seconds) of one epoch."""
    allocator.kept_memory = KEPT if kept else contextlib.nullcontext
    torch.manual_seed(0)
    learn = Learner(dls, simple_cnn(), cbs=[ChannelsLast()], progress=False)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    learn.fit_one_cycle(1, BOOK["lr"])
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    allocator.kept_memory = KEPT
    return wall, after.ru_minflt - before.ru_minflt, after.ru_stime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bs", type=int, default=BOOK["bs"])
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    if not allocator.available():
        print("kept_memory changes nothing here (not Linux with glibc): nothing to measure")
        return
    dls = DataLoaders.from_data(mnist(), bs=args.bs)
    epoch(dls, False)  # warm-up
    runs: dict[bool, list[tuple[float, int, float]]] = {False: [], True: []}
    for i in range(args.repeats):
        for kept in (False, True):
            runs[kept].append(epoch(dls, kept))
        (a, fa, sa), (b, fb, sb) = runs[False][-1], runs[True][-1]
        print(f"repeat {i}: default {a:.2f}s ({fa:,} page faults, {sa:.2f}s system), kept "
              f"{b:.2f}s ({fb:,}, {sb:.2f}s)", flush=True)
    med = {k: [statistics.median(r[j] for r in v) for j in range(3)] for k, v in runs.items()}
    (a, fa, sa), (b, fb, sb) = med[False], med[True]
    steps = -(-len(dls.train.y) // args.bs) if hasattr(dls.train, "y") else None
    per_step = f" ({fa / steps:,.0f} and {fb / steps:,.0f} a training step)" if steps else ""
    print(f"epoch at bs {args.bs}, medians of {args.repeats}: default {a:.2f}s, kept {b:.2f}s, "
          f"ratio {b / a:.3f} (kept / default); page faults {fa:,.0f} and {fb:,.0f}{per_step}; "
          f"system time {sa:.2f}s and {sb:.2f}s; peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
