"""Where a default `convscope train` spends its time outside training, phase by phase.

Runs the command (default: `convscope train` on the embedded MNIST, into a temporary folder)
in a subprocess, timestamps every line it prints as it arrives, and prints each phase:
start-up to the data line (Python, torch's import, reading and checking MNIST), the data line to
the first epoch's end minus that epoch's training, the end of training to the accuracy line
(the last checkpoint, test-time augmentation where the recipe has it, metrics, weights,
statistics, interpretation, plots), the accuracy line
to the run folder line (the diagnosis and the report), and the run folder line to the process's
exit. Training time is the command's own "in X s of training". Target (issue 18): <= 3 s
outside training.

    .venv/bin/python bench/run_phases.py [--repeats 3] [-- extra train options]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time


def one_run(extra: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "convscope", "train", "--out", f"{tmp}/run", *extra]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)
        marks: dict[str, float] = {}
        rows: list[float] = []
        training = 0.0
        for line in proc.stdout:
            now = time.perf_counter() - start
            if line.startswith("data:"):
                marks["data"] = now
            elif re.match(r"^\d+ ", line):
                rows.append(now)
            elif line.startswith("test accuracy") and "s of training" in line:
                marks["accuracy"] = now
                training = float(re.search(r"\(([\d.]+)s of training\)", line).group(1))
            elif line.startswith("run folder:"):
                marks["report"] = now
        proc.wait()
        total = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with {proc.returncode}")
    return {"start-up to the data line": marks["data"],
            "the fit's own overhead (total to the last epoch row, less training)":
                rows[-1] - marks["data"] - training,
            "end of training to the accuracy line": marks["accuracy"] - rows[-1],
            "diagnosis and report": marks["report"] - marks["accuracy"],
            "exit": total - marks["report"], "training": training, "total": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("extra", nargs="*", help="options passed to convscope train")
    args = parser.parse_args()
    runs = []
    for i in range(args.repeats):
        runs.append(one_run(args.extra))
        print(f"run {i}: " + ", ".join(f"{k.split(' (')[0]} {v:.2f}s"
                                       for k, v in runs[-1].items()), flush=True)
    print(f"median of {args.repeats} runs:")
    for key in runs[0]:
        print(f"  {key}: {statistics.median(r[key] for r in runs):.2f}s")
    outside = statistics.median(r["total"] - r["training"] for r in runs)
    print(f"outside training: {outside:.2f}s (target <= 3 s)")


if __name__ == "__main__":
    main()
