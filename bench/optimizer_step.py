"""convscope's AdamW against torch.optim.AdamW: time of one step over simple_cnn's parameters.

Same hyperparameters (fastai's: betas (0.9, 0.99), eps 1e-5, weight decay 0.01), the same
random gradients, alternating in this one process; medians of the per-round means.
tests/test_optimizers.py checks that the two compute the same update.

    .venv/bin/python bench/optimizer_step.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from convscope import adamw, simple_cnn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()
    models = {"convscope": simple_cnn().to(args.device),
              "torch.optim": simple_cnn().to(args.device)}
    opts = {"convscope": adamw(models["convscope"].parameters(), lr=0.01),
            "torch.optim": torch.optim.AdamW(models["torch.optim"].parameters(), lr=0.01,
                                             betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)}
    for model in models.values():
        for p in model.parameters():
            p.grad = torch.randn_like(p)
    times: dict[str, list[float]] = {name: [] for name in opts}
    for opt in opts.values():  # warm-up, and torch's first call imports torch._dynamo
        opt.step()
    for _ in range(args.rounds):
        for name, opt in opts.items():
            start = time.perf_counter()
            for _ in range(20):
                opt.step()
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # the steps were queued, not yet run
            times[name].append((time.perf_counter() - start) / 20)
    ours, theirs = (statistics.median(times[k]) * 1e6 for k in opts)
    n = sum(p.numel() for p in models["convscope"].parameters())
    print(f"AdamW step over simple_cnn ({n} parameters in "
          f"{len(list(models['convscope'].parameters()))} tensors): convscope {ours:.0f} us, "
          f"torch.optim {theirs:.0f} us; ratio {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
