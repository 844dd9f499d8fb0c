"""convscope against fastai on chapter 13's final recipe, end to end and per epoch.

The recipe: the book's CNN (conv, batchnorm, ReLU blocks; 8-16-32-64-10, 5x5 first kernel),
bs 512, Adam(W) with fastai's defaults, fit_one_cycle(5, 0.1), evaluated on the 10,000 test
digits. fastai runs twice: as the book does (its DataBlock over MNIST stored as PNG files,
written once to bench/.mnist-png from the embedded IDX files), and at its fastest (the same
normalised MNIST as in-memory tensors through fastai's DataLoader). Each side is its own
process, timed from its start to its trained, evaluated model; peak memory (RSS) is that
process's.

fastai lives in its own venv, made by this script: bench/.venv-fastai with torch==2.14.1,
torchvision==0.29.1, then fastai (about 6 GB). It is never a dependency of convscope. If the
venv cannot be made, fastai is skipped with a message and convscope's side still runs.

    .venv/bin/python bench/vs_fastai.py [--repeats 1] [--epochs 5] [--lr 0.1] [--modes tensor]
        [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
VENV = HERE / ".venv-fastai"
PNG = HERE / ".mnist-png"


def ensure_fastai() -> Path | None:
    python = VENV / "bin" / "python"
    check = [str(python), "-c", "import fastai.vision.all"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"making {VENV} (torch 2.14.1, torchvision 0.29.1, fastai)...", flush=True)
    steps = [[sys.executable, "-m", "venv", str(VENV)],
             [str(VENV / "bin" / "pip"), "install", "-q", "torch==2.14.1", "torchvision==0.29.1"],
             [str(VENV / "bin" / "pip"), "install", "-q", "fastai"]]
    for cmd in steps:
        if subprocess.run(cmd).returncode != 0:
            print(f"skipping fastai: `{' '.join(cmd)}` failed", flush=True)
            return None
    if subprocess.run(check, capture_output=True).returncode != 0:
        print("skipping fastai: it does not import in its venv", flush=True)
        return None
    return python


def ensure_pngs() -> Path:
    """MNIST as the book has it: training/<digit>/*.png and testing/<digit>/*.png."""
    done = PNG / ".complete"
    if done.exists():
        return PNG
    from PIL import Image

    from convscope import mnist

    data = mnist()
    print(f"writing MNIST as PNG files to {PNG} (once)...", flush=True)
    for split, x, y in (("training", data.x_train, data.y_train),
                        ("testing", data.x_valid, data.y_valid)):
        for i, (img, label) in enumerate(zip(x[:, 0].numpy(), y.tolist(), strict=True)):
            folder = PNG / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i}.png")
    done.touch()
    return PNG


def run_side(cmd: list[str]) -> dict:
    """Run one side; its wall time from start to exit, its peak RSS, and what it printed."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[1]} failed:\n{err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["end_to_end_s"] = wall
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--bs", type=int, default=512)
    parser.add_argument("--device", default="cpu", help="both sides: cpu, cuda or cuda:N")
    parser.add_argument("--modes", nargs="+", choices=("tensor", "png"), default=["tensor", "png"],
                        help="which fastai pipelines to run (png: the book's, about 3 min)")
    args = parser.parse_args()
    fastai_python = ensure_fastai()
    png = ensure_pngs() if fastai_python and "png" in args.modes else None
    from convscope.data import EMBEDDED_MNIST

    ours: list[dict] = []
    theirs: dict[str, list[dict]] = {"png": [], "tensor": []}
    for i in range(args.repeats):
        ours.append(run_side([sys.executable, str(HERE / "_convscope_side.py"),
                              str(args.epochs), str(args.lr), str(args.bs), args.device]))
        print(f"repeat {i} convscope:     {json.dumps(ours[-1])}", flush=True)
        if fastai_python:
            for mode, path in (("tensor", EMBEDDED_MNIST), ("png", png)):
                if mode not in args.modes:
                    continue
                theirs[mode].append(run_side([str(fastai_python), str(HERE / "_fastai_side.py"),
                                              mode, str(path), str(args.epochs), str(args.lr),
                                              str(args.bs), args.device]))
                print(f"repeat {i} fastai {mode:6s}: {json.dumps(theirs[mode][-1])}", flush=True)

    def med(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def per_epoch(runs: list[dict]) -> float:
        return statistics.median(t for r in runs for t in r["epoch_s"])

    def line(name: str, runs: list[dict]) -> str:
        return (f"{name:18s} end to end {med(runs, 'end_to_end_s'):6.1f}s (import "
                f"{med(runs, 'import_s'):.1f}s), {per_epoch(runs):6.2f}s per epoch, accuracy "
                f"{med(runs, 'accuracy'):.4f}, peak RSS {med(runs, 'peak_rss_mb'):5.0f} MB")

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; recipe: fit_one_cycle("
          f"{args.epochs}, {args.lr}), bs {args.bs}; medians of {args.repeats}")
    print(line("convscope", ours))
    for mode, label in (("tensor", "fastai (tensors)"), ("png", "fastai (book, PNG)")):
        runs = theirs[mode]
        if not runs:
            continue
        print(line(label, runs))
        print(f"  ratios convscope / {label}: end to end "
              f"{med(ours, 'end_to_end_s') / med(runs, 'end_to_end_s'):.2f} (target <= 0.4), "
              f"per epoch {per_epoch(ours) / per_epoch(runs):.2f} (target <= 0.5), peak RSS "
              f"{med(ours, 'peak_rss_mb') / med(runs, 'peak_rss_mb'):.2f}")


if __name__ == "__main__":
    main()
