"""The Learner's overhead: time per epoch of Learner.fit_one_cycle over a hand-written loop.

Both sides train the same simple_cnn (channels_last) on the same in-memory MNIST batches
(bs 512) with the same AdamW and the same 1cycle schedule (torch's OneCycleLR, which the
tests show equals convscope's), and evaluate accuracy on the test set after each epoch. They
alternate in this one process, several repeats. Reported: the ratio of the medians, and the
median of the ratios of each back-to-back pair, which a shared machine's drifting speed
disturbs least (target 1.05).

The host's drift (+-10% between back-to-back epochs) is larger than the overhead sought, so a
second measurement isolates it: the same two sides, same data and batches, with a model that
holds simple_cnn's parameters but computes almost nothing (`ParamsOnly`), so an epoch is the
loops' own cost (batching, events, callbacks, the divergence check, the recorder, the optimizer)
and the difference is the Learner's fixed cost per batch. That cost added to the hand-written
loop's real epoch gives the ratio with far less noise.

    .venv/bin/python bench/learner_vs_loop.py [--repeats 5] [--epochs 1]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from convscope import ChannelsLast, DataLoaders, Learner, adamw, mnist, simple_cnn


class ParamsOnly(nn.Module):
    """simple_cnn's parameters, each reached by the gradient, behind a near-free forward."""

    def __init__(self) -> None:
        super().__init__()
        self.net = simple_cnn()
        self.first = list(self.net.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.stack([p.flatten()[0] for p in self.first]).sum()
        return x.flatten(1)[:, :10] * w


def hand_loop(dls: DataLoaders, epochs: int, lr: float, make_model=simple_cnn) -> float:
    torch.manual_seed(0)
    model = make_model().to(dls.device, memory_format=torch.channels_last)
    opt = adamw(model.parameters(), lr=lr / 25)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * len(dls.train), pct_start=0.25, div_factor=25,
        final_div_factor=1e5 / 25, base_momentum=0.85, max_momentum=0.95)
    for _ in range(epochs):
        model.train()
        for xb, yb in dls.train:
            xb = xb.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        model.eval()
        correct = torch.zeros((), dtype=torch.long, device=dls.device)
        with torch.inference_mode():
            for xb, yb in dls.valid:
                correct += (model(xb.contiguous(memory_format=torch.channels_last)).argmax(1)
                            == yb).sum()
    return correct.item() / len(dls.valid.y)


def learner(dls: DataLoaders, epochs: int, lr: float, make_model=simple_cnn) -> float:
    torch.manual_seed(0)
    learn = Learner(dls, make_model(), cbs=[ChannelsLast()], progress=False)
    learn.fit_one_cycle(epochs, lr)
    return learn.recorder.values[-1]["accuracy"]


def timed(fn, *args) -> tuple[float, float]:
    start = time.perf_counter()
    acc = fn(*args)
    return time.perf_counter() - start, acc


def loop_cost(dls: DataLoaders, repeats: int, lr: float) -> tuple[float, float]:
    """Seconds per epoch of (hand loop, Learner) around the near-free ParamsOnly model."""
    loop, learn = [], []
    timed(hand_loop, dls, 1, lr, ParamsOnly)  # warm-up
    for _ in range(repeats):
        loop.append(timed(hand_loop, dls, 1, lr, ParamsOnly)[0])
        learn.append(timed(learner, dls, 1, lr, ParamsOnly)[0])
    return statistics.median(loop), statistics.median(learn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()
    dls = DataLoaders.from_data(mnist(), bs=512, device=args.device)
    timed(hand_loop, dls, 1, args.lr)  # warm-up
    loop, learn = [], []
    for i in range(args.repeats):
        t, a = timed(hand_loop, dls, args.epochs, args.lr)
        loop.append(t / args.epochs)
        t2, a2 = timed(learner, dls, args.epochs, args.lr)
        learn.append(t2 / args.epochs)
        print(f"repeat {i}: loop {loop[-1]:.2f}s/epoch (acc {a:.4f}), Learner "
              f"{learn[-1]:.2f}s/epoch (acc {a2:.4f})", flush=True)
    a, b = statistics.median(loop), statistics.median(learn)
    paired = statistics.median(y / x for x, y in zip(loop, learn, strict=True))
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}")
    print(f"time per epoch, median of {args.repeats}: hand-written loop {a:.2f}s, Learner "
          f"{b:.2f}s, ratio of medians {b / a:.3f}; median of the paired (back-to-back) "
          f"ratios {paired:.3f} (target <= 1.05)")
    bare_loop, bare_learn = loop_cost(dls, 3 * args.repeats, args.lr)
    n = len(dls.train) + len(dls.valid)
    print(f"with the near-free model, per epoch of {n} batches: hand-written loop "
          f"{bare_loop:.3f}s, Learner {bare_learn:.3f}s; the Learner's own cost is "
          f"{(bare_learn - bare_loop) / n * 1e6:.0f} us per batch, and the ratio it makes of "
          f"the loop's real {a:.2f}s epoch is {(a + bare_learn - bare_loop) / a:.3f} "
          f"(target <= 1.05)")


if __name__ == "__main__":
    main()
