"""How fast the CLI starts: `convscope --help`, and `convscope train` up to its first batch.

Each is a fresh process, timed from its start; the first batch is marked by a callback that
exits the process there, patched in when the CLI itself imports convscope.learner (so the
harness imports nothing, torch included, ahead of the CLI). Target: under 2 s (heavy imports
are lazy). The first batch is timed twice, alternating: with convscope's AdamW, and with
torch.optim.AdamW (same hyperparameters), whose first call imports torch._dynamo.

    .venv/bin/python bench/cli_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

FIRST_BATCH = """
import importlib.abc, importlib.util, os, sys

def patch(learner):  # called once convscope.learner is imported, by the CLI itself
    class Exit(learner.Callback):
        def before_batch(self):
            sys.stdout.flush()
            os._exit(0)

    original = learner.Learner.__init__
    def patched(self, *a, **k):
        original(self, *a, **k)
        self.add_cb(Exit())
        if sys.argv[2] == "torch":
            import torch
            self.opt_func = lambda p, lr: torch.optim.AdamW(p, lr=lr, betas=(0.9, 0.99),
                                                            eps=1e-5, weight_decay=0.01)
    learner.Learner.__init__ = patched

class AfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "convscope.learner":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            patch(module)
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, AfterImport())
from convscope.cli import main  # imports no torch: the CLI does, as it would when run
main(["train", "--no-stats", "--out", sys.argv[1]])
"""


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        helps = [timed([sys.executable, "-m", "convscope", "--help"])
                 for _ in range(args.repeats)]
        firsts: dict[str, list[float]] = {"convscope": [], "torch": []}
        for _ in range(args.repeats):
            for opt in firsts:
                firsts[opt].append(timed([sys.executable, "-c", FIRST_BATCH, tmp, opt]))
        torch_import = [timed([sys.executable, "-c", "import torch"])
                        for _ in range(args.repeats)]
    print(f"`convscope --help`: median {statistics.median(helps):.2f}s over {args.repeats} "
          f"runs (target < 2 s)")
    print(f"`python -c 'import torch'` alone: median {statistics.median(torch_import):.2f}s")
    ours, theirs = (statistics.median(firsts[k]) for k in ("convscope", "torch"))
    print(f"`convscope train` to its first batch (imports, MNIST read and checked, model, "
          f"optimizer): median {ours:.2f}s with convscope's AdamW, {theirs:.2f}s with "
          f"torch.optim.AdamW; ratio {ours / theirs:.2f} (target < 2 s)")


if __name__ == "__main__":
    main()
