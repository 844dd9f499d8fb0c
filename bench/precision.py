"""fp32 vs bf16 vs fp16 mixed precision: time per epoch, side by side, on any machine.

The book's final model (simple_cnn with batchnorm, channels_last) on MNIST, bs 512, one-epoch
fit_one_cycle runs, the precisions alternating in this one process so they see the same machine
state. Prints the CPU's capability (AVX2 or AVX512, native bf16 / fp16 or not), each run,
each precision's median time and accuracy, and the ratios to fp32. Also times bf16 on 16x16
images with and without the guard that runs convolutions on inputs smaller than their kernel
in fp32 (convscope.precision), which is what that guard costs.

    .venv/bin/python bench/precision.py [--repeats 3] [--subset 20000] [--device cpu]
    .venv/bin/python bench/precision.py --device cuda      # on a GPU machine
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from convscope import ChannelsLast, DataLoaders, Learner, MixedPrecision, mnist, simple_cnn
from convscope.data import ImageData
from convscope.precision import cpu_capability, cpu_native_bf16, cpu_native_fp16


def epoch(dls: DataLoaders, precision: str, guard: bool = True) -> tuple[float, float]:
    """(seconds, accuracy) of one epoch of fit_one_cycle in `precision`."""
    torch.manual_seed(0)
    cbs = [ChannelsLast()]
    if precision != "fp32":
        mp = MixedPrecision(precision)
        cbs.append(mp)
    learn = Learner(dls, simple_cnn(in_channels=dls.in_channels), cbs=cbs, progress=False)
    if precision == "bf16" and not guard:  # the guard off: bf16 everywhere, as torch does it
        learn.remove_cb("divergence_guard")  # the fault it steers around may fire
        original = MixedPrecision.before_fit

        def unguarded(self):
            original(self)
            if self._guard is not None:
                self._guard.remove()
                self._guard = None

        mp.before_fit = unguarded.__get__(mp)
    if dls.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fp16 on a CPU without fp16 instructions warns
        learn.fit_one_cycle(1, 1e-2)
    if dls.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, learn.recorder.values[-1]["accuracy"]


def resized(data: ImageData, size: int) -> ImageData:
    """The same digits at size x size (the 16x16 images whose last convs see 1x1 inputs)."""
    def go(x):
        return F.interpolate(x.float(), size=(size, size), mode="area").round().to(torch.uint8)

    return ImageData(go(data.x_train), data.y_train, go(data.x_valid), data.y_valid,
                     data.classes, f"{data.source} at {size}x{size}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--subset", type=int, default=20000,
                        help="training images (0: all 60,000)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    args = parser.parse_args()
    device = torch.device(args.device)
    data = mnist()
    if args.subset:
        data = data.subset(args.subset, seed=0)
    dls = DataLoaders.from_data(data, bs=512, device=device)
    small = DataLoaders.from_data(resized(data, 16), bs=512, device=device)
    if device.type == "cpu":
        print(f"cpu: {platform.processor() or platform.machine()}, torch capability "
              f"{cpu_capability()}, native bf16: {cpu_native_bf16()}, native fp16: "
              f"{cpu_native_fp16()}, {torch.get_num_threads()} threads, torch "
              f"{torch.__version__}")
    else:
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    precisions = args.precisions.split(",")
    for p in precisions:
        epoch(dls, p)  # warm-up: oneDNN and cuDNN pick their kernels on the first batches
    times: dict[str, list[tuple[float, float]]] = {p: [] for p in precisions}
    guarded, unguarded = [], []
    for i in range(args.repeats):
        for p in precisions:
            times[p].append(epoch(dls, p))
        if "bf16" in precisions and device.type == "cpu":
            guarded.append(epoch(small, "bf16", guard=True))
            unguarded.append(epoch(small, "bf16", guard=False))
        print(f"repeat {i}: " + ", ".join(f"{p} {times[p][-1][0]:.2f}s" for p in precisions)
              + (f"; 16x16 bf16 guarded {guarded[-1][0]:.2f}s, unguarded "
                 f"{unguarded[-1][0]:.2f}s" if guarded else ""), flush=True)
    base = statistics.median(t for t, _ in times[precisions[0]])
    for p in precisions:
        t = statistics.median(s for s, _ in times[p])
        acc = statistics.median(a for _, a in times[p])
        print(f"{p}: {t:.2f}s per epoch (median of {args.repeats}), accuracy {acc:.2%}, "
              f"ratio to {precisions[0]} {t / base:.2f}")
    if guarded:
        g = statistics.median(t for t, _ in guarded)
        u = statistics.median(t for t, _ in unguarded)
        print(f"bf16 on 16x16 images: guarded {g:.2f}s, unguarded {u:.2f}s per epoch, "
              f"ratio {g / u:.3f} (the guard's cost)")


if __name__ == "__main__":
    main()
