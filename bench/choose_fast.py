"""Choose the `fast` recipe on a validation split held out of MNIST's training set.

The test set is never read: 10,000 of the 60,000 training digits (a fixed split, seed 0) are
held out, the other 50,000 train. Every candidate recipe and the three-epoch baseline run for
each seed, on AVX2-held kernels (`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`) and on the
machine's own, in parallel worker processes of a few threads each. Prints one line per
candidate and kernel set: lowest and mean validation accuracy over the seeds, and the median
training time as a ratio to the baseline's (both measured in the same workers).

    .venv/bin/python bench/choose_fast.py [--seeds 0 1 ...] [--workers 1] [--threads 2]

Candidates are option values over the baseline's settings (see CANDIDATES); the winner is the
one whose lowest accuracy is highest among those within the time budget.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BASELINE = {"epochs": 3, "lr": 0.03, "bs": 512, "hard": 1.0, "tta": False}
CANDIDATES = {
    "e2-lr.02-bs256-h.4": {"epochs": 2, "lr": 0.02, "bs": 256, "hard": 0.4, "tta": True},
    "e2-lr.02-bs256-h.5": {"epochs": 2, "lr": 0.02, "bs": 256, "hard": 0.5, "tta": True},
    "e2-lr.03-bs256-h.4": {"epochs": 2, "lr": 0.03, "bs": 256, "hard": 0.4, "tta": True},
    "e2-lr.025-bs256-h.45": {"epochs": 2, "lr": 0.025, "bs": 256, "hard": 0.45, "tta": True},
    "e3-lr.02-bs256-h.2": {"epochs": 3, "lr": 0.02, "bs": 256, "hard": 0.2, "tta": True},
    "e3-lr.03-bs256-h.25": {"epochs": 3, "lr": 0.03, "bs": 256, "hard": 0.25, "tta": True},
    "e2-lr.02-bs128-h.4": {"epochs": 2, "lr": 0.02, "bs": 128, "hard": 0.4, "tta": True},
    # a second round, around the first round's best within the budget
    "e3-lr.03-bs256-h.2": {"epochs": 3, "lr": 0.03, "bs": 256, "hard": 0.2, "tta": True},
    "e3-lr.035-bs256-h.2": {"epochs": 3, "lr": 0.035, "bs": 256, "hard": 0.2, "tta": True},
    "e3-lr.04-bs256-h.25": {"epochs": 3, "lr": 0.04, "bs": 256, "hard": 0.25, "tta": True},
    "e3-lr.03-bs256-h.25-notta": {"epochs": 3, "lr": 0.03, "bs": 256, "hard": 0.25,
                                  "tta": False},
    # a third round: e3-lr.03-h.25 took 0.63 of the baseline's time on the 2-core machine, so
    # candidates of 1.2-1.3 epochs' worth of images
    "e2-lr.03-bs256-h.3": {"epochs": 2, "lr": 0.03, "bs": 256, "hard": 0.3, "tta": True},
    "e2-lr.025-bs256-h.3": {"epochs": 2, "lr": 0.025, "bs": 256, "hard": 0.3, "tta": True},
    "e3-lr.03-bs256-h.15": {"epochs": 3, "lr": 0.03, "bs": 256, "hard": 0.15, "tta": True},
    "e3-lr.04-bs256-h.15": {"epochs": 3, "lr": 0.04, "bs": 256, "hard": 0.15, "tta": True},
    "e3-lr.03-bs256-h.1": {"epochs": 3, "lr": 0.03, "bs": 256, "hard": 0.1, "tta": True},
    "e2-lr.04-bs512-h.4": {"epochs": 2, "lr": 0.04, "bs": 512, "hard": 0.4, "tta": True},
}
ISAS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, "native": {}}


def worker(jobs: list[dict], threads: int) -> None:
    """Run each job (name, settings, seed) and print one JSON line per job."""
    import torch

    torch.set_num_threads(threads)
    from convscope.callbacks import ValidPreds
    from convscope.config import TrainConfig
    from convscope.data import mnist
    from convscope.metrics import accuracy
    from convscope.run import make_learner
    from convscope.tta import UNSURE_BELOW

    data = mnist().split(1 / 6, seed=0)  # 50,000 train, 10,000 held out of the training set
    for job in jobs:
        cfg = TrainConfig(**job["settings"], seed=job["seed"])
        learn = make_learner(data, cfg, progress=False)
        kept = ValidPreds()
        learn.add_cb(kept)
        start = time.perf_counter()
        learn.fit_one_cycle(cfg.epochs, cfg.lr)
        acc = learn.recorder.values[-1]["accuracy"]
        if cfg.tta:
            probs, targs = learn.tta(plain=kept.preds, unsure_below=UNSURE_BELOW)
            acc = float(accuracy(probs, targs))
        print(json.dumps({**job, "seconds": time.perf_counter() - start, "accuracy": acc}),
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="these candidates alone (the baseline always runs)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker), args.threads)
        return
    recipes = {"baseline": BASELINE, **{n: c for n, c in CANDIDATES.items()
                                        if not args.only or n in args.only}}
    results = []
    for isa, env in ISAS.items():
        jobs = [{"isa": isa, "name": n, "settings": s, "seed": seed}
                for seed in args.seeds for n, s in recipes.items()]
        procs = [subprocess.Popen(
            [sys.executable, __file__, "--threads", str(args.threads), "--worker",
             json.dumps(jobs[w::args.workers])], env={**os.environ, **env},
            stdout=subprocess.PIPE, text=True) for w in range(args.workers)]
        for p in procs:
            out, _ = p.communicate()
            results += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            if p.returncode:
                sys.exit(f"a worker failed with exit code {p.returncode}")
    for isa in ISAS:
        base = statistics.median(r["seconds"] for r in results
                                 if r["isa"] == isa and r["name"] == "baseline")
        for name in recipes:
            rs = [r for r in results if r["isa"] == isa and r["name"] == name]
            accs = [r["accuracy"] for r in rs]
            ratio = statistics.median(r["seconds"] for r in rs) / base
            print(f"{isa:6s} {name:22s} valid accuracy lowest {min(accs):.2%} mean "
                  f"{statistics.mean(accs):.3%} over {len(accs)} seeds; time ratio {ratio:.3f}")


if __name__ == "__main__":
    main()
