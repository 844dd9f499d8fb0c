"""Training with freed memory kept in the process (allocator.kept_memory, what Learner.fit
does) against glibc's own handling of it, side by side.

Each run is a fresh process (glibc's own adjustment of its thresholds stops for good once a
process sets one, so no process can measure both): one warm-up epoch of the book's recipe
(fit_one_cycle at lr 0.1, batch size 512 unless --bs), then one measured epoch, then a
validation pass after the fit (what predictions, test-time augmentation and a notebook's next
cell run in). Modes, alternating over the repeats:

- default: glibc's own thresholds, never set;
- kept: convscope's (kept during the fit, glibc's adjusted values after it);
- kept-then-start: kept during the fit, then glibc's starting values (128 KiB) set after it:
  why allocator.AFTER is not those.

Prints each run, then medians: the epoch's wall time, minor page faults and system CPU time,
the validation pass's wall time and faults, and the ratios to the default.

    .venv/bin/python bench/allocator.py [--bs 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time

MODES = ("default", "kept", "kept-then-start")


def run(mode: str, bs: int) -> dict:
    """One process's measurements (the --worker side)."""
    import torch

    from convscope import ChannelsLast, DataLoaders, Learner, allocator, mnist, simple_cnn
    from convscope.recipes import RECIPES

    if mode == "default":
        allocator.kept_memory = contextlib.nullcontext
    elif mode == "kept-then-start":
        allocator.AFTER = dict.fromkeys(allocator.AFTER, 128 << 10)
    dls = DataLoaders.from_data(mnist(), bs=bs)

    def usage() -> tuple[float, int, float]:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return time.perf_counter(), r.ru_minflt, r.ru_stime

    torch.manual_seed(0)
    learn = Learner(dls, simple_cnn(), cbs=[ChannelsLast()], progress=False)
    learn.fit_one_cycle(1, RECIPES["book"].settings["lr"])  # warm-up
    a = usage()
    learn.fit_one_cycle(1, RECIPES["book"].settings["lr"])
    b = usage()
    learn.validate()
    c = usage()
    return {"mode": mode, "epoch_s": b[0] - a[0], "epoch_faults": b[1] - a[1],
            "epoch_sys_s": b[2] - a[2], "valid_s": c[0] - b[0], "valid_faults": c[1] - b[1],
            "steps": len(dls.train)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bs", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run(args.worker, args.bs)))
        return
    from convscope import allocator

    if not allocator.available():
        print("kept_memory changes nothing here (not Linux with glibc, or malloc's thresholds "
              "set by the user): nothing to measure")
        return
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for i in range(args.repeats):
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--bs", str(args.bs), "--worker",
                                  mode], capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            runs[mode].append(r)
            print(f"repeat {i} {mode:16s}: epoch {r['epoch_s']:.2f}s ({r['epoch_faults']:,} "
                  f"page faults, {r['epoch_sys_s']:.2f}s system); validation after the fit "
                  f"{r['valid_s']:.3f}s ({r['valid_faults']:,} faults)", flush=True)
    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "mode"}
           for m, rs in runs.items()}
    base = med["default"]
    print(f"medians of {args.repeats}, bs {args.bs}, {torch_threads()} threads:")
    for mode in MODES:
        m = med[mode]
        print(f"  {mode:16s} epoch {m['epoch_s']:.2f}s (ratio {m['epoch_s'] / base['epoch_s']:.3f}"
              f"), {m['epoch_faults'] / m['steps']:,.0f} page faults a step, "
              f"{m['epoch_sys_s']:.2f}s system; validation after the fit {m['valid_s']:.3f}s "
              f"(ratio {m['valid_s'] / base['valid_s']:.2f}), {m['valid_faults']:,.0f} faults")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
