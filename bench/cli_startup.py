"""How fast the CLI starts: `convscope --help`, and `convscope train` up to its first batch.

Each is a fresh process, timed from its start; the first batch is marked by a callback that
exits the process there. Target: under 2 s (heavy imports are lazy).

    .venv/bin/python bench/cli_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

FIRST_BATCH = """
import os, sys, time
from convscope import learner
from convscope.cli import main

class Exit(learner.Callback):
    def before_batch(self):
        sys.stdout.flush()
        os._exit(0)

original = learner.Learner.__init__
def patched(self, *a, **k):
    original(self, *a, **k)
    self.add_cb(Exit())
learner.Learner.__init__ = patched
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
        firsts = [timed([sys.executable, "-c", FIRST_BATCH, tmp]) for _ in range(args.repeats)]
    print(f"`convscope --help`: median {statistics.median(helps):.2f}s over {args.repeats} "
          f"runs (target < 2 s)")
    print(f"`convscope train` to its first batch (imports, MNIST read and checked, model): "
          f"median {statistics.median(firsts):.2f}s (target < 2 s)")


if __name__ == "__main__":
    main()
