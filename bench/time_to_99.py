"""Time to 99.0% MNIST test accuracy: the `fast` recipe against the three-epoch baseline
(simple_cnn, fit_one_cycle(3, 0.03), bs 512, every image every epoch, plain evaluation), side
by side in one process, seed by seed.

Both run as `convscope train` runs them (ActivationStats and GradientStats on, no progress bar),
alternating per seed so a drift in the host's speed reaches both. Training seconds are the fit's
wall time, validation after each epoch included, and for the fast recipe the augmented pass
over the unsure test images too (its accuracy is the recipe's result). Ends with one line:
`ratio <x> (fast / baseline, median training seconds); accuracies <a> <b> ...` (the fast
recipe's results, one per seed). Targets: every seed >= 99.0%, mean >= 99.1%, ratio <= 0.5.
The recipe was chosen on a validation split held out of the training set (bench/choose_fast.py);
this script is where it meets the test set.

    .venv/bin/python bench/time_to_99.py [--seeds 0 1 ... 9] [--device cuda]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import replace

import torch

from convscope.callbacks import ValidPreds
from convscope.config import TrainConfig
from convscope.metrics import accuracy
from convscope.run import load_data, make_learner
from convscope.tta import UNSURE_BELOW

BASELINE = {"epochs": 3, "lr": 0.03, "bs": 512, "precision": "fp32", "tta": False, "hard": 1.0}
TARGET = {"lowest": 0.990, "mean": 0.991, "ratio": 0.5}


def describe(cfg: TrainConfig) -> str:
    return (f"fit_one_cycle({cfg.epochs}, {cfg.lr}), bs {cfg.bs}, {cfg.precision}, "
            f"{'channels_last' if cfg.channels_last else 'NCHW'}"
            + (f", epochs after the first on the hardest {cfg.hard:.0%}" if cfg.hard < 1 else "")
            + (", test-time augmentation" if cfg.tta else ""))


def train(cfg: TrainConfig, data) -> tuple[float, list[float]]:
    """Seconds, and the accuracy after each epoch (the last one with test-time augmentation
    when the recipe has it, the outputs of the last validation reused as `convscope train`
    does)."""
    learn = make_learner(data, cfg, progress=False)
    kept = ValidPreds()
    learn.add_cb(kept)
    start = time.perf_counter()
    learn.fit_one_cycle(cfg.epochs, cfg.lr)
    accs = [v["accuracy"] for v in learn.recorder.values]
    if cfg.tta:
        probs, targs = learn.tta(plain=kept.preds, unsure_below=UNSURE_BELOW)
        accs[-1] = float(accuracy(probs, targs))
    return time.perf_counter() - start, accs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()
    default = TrainConfig(recipe="fast", device=args.device)
    baseline = replace(default, **BASELINE)
    print(f"baseline: {describe(baseline)}\nfast:     {describe(default)}\n"
          f"machine {platform.machine()} ({platform.processor() or 'cpu'}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
    data = load_data(default)
    times: dict[str, list[float]] = {"baseline": [], "fast": []}
    final: list[float] = []
    for seed in args.seeds:
        for name, cfg in (("baseline", baseline), ("fast", default)):
            seconds, accs = train(replace(cfg, seed=seed), data)
            times[name].append(seconds)
            if name == "fast":
                final.append(accs[-1])
            first = next((i + 1 for i, a in enumerate(accs) if a >= 0.99), None)
            print(f"seed {seed} {name:8s}: {seconds:.2f}s of training, accuracy by epoch "
                  f"{' '.join(f'{a:.2%}' for a in accs)}; 99.0% "
                  + (f"first reached after epoch {first}" if first else "not reached"),
                  flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["fast"] / med["baseline"]
    met = (min(final) >= TARGET["lowest"] and statistics.mean(final) >= TARGET["mean"]
           and ratio <= TARGET["ratio"])
    print(f"median training: baseline {med['baseline']:.2f}s, fast {med['fast']:.2f}s; fast "
          f"accuracy lowest {min(final):.2%}, mean {statistics.mean(final):.3%} (targets: every "
          f"seed >= 99.0%, mean >= 99.1%, ratio <= 0.5: {'met' if met else 'NOT met'})")
    print(f"ratio {ratio:.3f} (fast / baseline, median training seconds); accuracies "
          f"{' '.join(f'{a:.4f}' for a in final)}")


if __name__ == "__main__":
    main()
