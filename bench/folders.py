"""Image folders at scale: what a user's own colour folder costs convscope and fastai to read,
cache, hold and train on, and how that grows from 10,000 to 200,000 images.

For each image size and file format, folders of each count are made once under --root
(10 classes, one subfolder each; smooth random colour fields with a class tint, so PNG and
JPEG compress as photographs do rather than as noise). On each folder, every figure from its
own process:
  - the decode floor: the files decoded by PIL in a process per core, nothing else done;
  - convscope's first read: image_folder with an empty cache (list, decode, cache, split);
  - convscope's cached read: the same in a second process, from the cache;
  - memory: what reading the set added to the process's RSS, and the peak RSS of the first
    and the cached run (training one epoch included) above the RSS before the read, against
    the uint8 size of the decoded set;
  - one epoch of simple_cnn, fit_one_cycle(1, 0.01), bs 512, for convscope (images in memory)
    and for fastai's ImageDataLoaders.from_folder (which decodes on every epoch).
The floor reads every file once before its clock starts, and convscope's reads come right
after it, so all of them read from the page cache: a cold disk is not measured. fastai's peak
RSS is its main process only (its loader workers are others).

    .venv/bin/python bench/folders.py [--counts 10000 50000 200000] [--sizes 32 64]
        [--formats png jpg] [--root bench/.folders] [--no-fastai]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from multiprocessing import Pool
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from vs_fastai import ensure_fastai, run_side  # noqa: E402

CLASSES = 10


def _write_chunk(args: tuple[str, int, int, int, str]) -> None:
    import numpy as np
    from PIL import Image

    folder, first, n, size, fmt = args
    rng = np.random.default_rng(first)
    tints = np.random.default_rng(0).integers(40, 216, (CLASSES, 3))
    for i in range(first, first + n):
        c = i % CLASSES
        field = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(field).resize((size, size), Image.Resampling.BICUBIC)
        pixels = (np.asarray(img, dtype=np.int16) + tints[c] - 128) // 2 + 64
        pixels += rng.integers(-8, 9, pixels.shape, dtype=np.int16)
        out = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        path = Path(folder) / f"class{c}" / f"{i:06}.{fmt}"
        out.save(path, quality=90) if fmt == "jpg" else out.save(path)


def make_folder(root: Path, count: int, size: int, fmt: str) -> Path:
    folder = root / f"{fmt}{size}-{count}"
    if (folder / ".complete").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for c in range(CLASSES):
        (folder / f"class{c}").mkdir(parents=True)
    print(f"writing {count:,} {size}x{size} {fmt.upper()} images to {folder} (once)...",
          flush=True)
    chunk = 2000
    jobs = [(str(folder), first, min(chunk, count - first), size, fmt)
            for first in range(0, count, chunk)]
    with Pool(os.cpu_count()) as pool:
        list(pool.imap_unordered(_write_chunk, jobs))
    (folder / ".complete").touch()
    return folder


def side(script: str, *args: object, python: str = sys.executable) -> dict:
    return run_side([python, str(HERE / script), *map(str, args)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--formats", nargs="+", choices=("png", "jpg"), default=["png", "jpg"])
    parser.add_argument("--root", type=Path, default=HERE / ".folders")
    parser.add_argument("--no-fastai", action="store_true")
    args = parser.parse_args()
    fastai = None if args.no_fastai else ensure_fastai()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; "
          f"{'fastai in ' + str(fastai) if fastai else 'fastai skipped'}", flush=True)
    rows = []
    for size in args.sizes:
        for fmt in args.formats:
            for count in args.counts:
                folder = make_folder(args.root, count, size, fmt)
                cache = args.root / ".cache" / folder.name
                shutil.rmtree(cache, ignore_errors=True)
                row = {"set": f"{count:,} {fmt.upper()} {size}x{size}", "count": count,
                       "size": size, "fmt": fmt}
                row["floor"] = side("_folders_side.py", "floor", folder, size)
                row["first"] = side("_folders_side.py", "convscope", folder, size, cache)
                row["cached"] = side("_folders_side.py", "convscope", folder, size, cache)
                if fastai:
                    row["fastai"] = side("_fastai_folders_side.py", folder, python=str(fastai))
                shutil.rmtree(cache, ignore_errors=True)
                rows.append(row)
                print(summary(row), flush=True)
                print("  " + json.dumps(row), flush=True)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}; targets: first read <= 1.3x the decode floor; "
          "cached read < 1 s per 50,000 images; peak memory < 1.5x the uint8 set (read: the "
          "RSS the reading added; peak: the first or the cached run's peak, training one epoch "
          "included, above the RSS before the read); an epoch <= 0.3 of fastai's")
    for row in rows:
        print(summary(row))
    growth(rows)


def summary(row: dict) -> str:
    floor, first, cached = row["floor"], row["first"], row["cached"]
    before, set_mb = cached["rss_before_data_mb"], cached["uint8_mb"]
    held = max(first["rss_after_read_mb"], cached["rss_after_read_mb"]) - before
    peak = max(first["peak_rss_mb"], cached["peak_rss_mb"]) - before
    text = (f"{row['set']:>22}: floor {floor['decode_s']:6.2f} s, first read "
            f"{first['read_s']:6.2f} s ({first['read_s'] / floor['decode_s']:.2f}x the floor), "
            f"cached read {cached['read_s']:5.2f} s ({cached['read_s'] * 50_000 / row['count']:.2f}"
            f" s per 50,000); a {set_mb:.0f} MB set: read {held:.0f} MB ({held / set_mb:.2f}x), "
            f"peak while training {peak:.0f} MB ({peak / set_mb:.2f}x) above the process's "
            f"{before:.0f} MB; epoch {cached['epoch_s']:6.2f} s")
    if "fastai" in row:
        fa = row["fastai"]
        text += (f"; fastai: read {fa['read_s']:.2f} s, epoch {fa['epoch_s']:.2f} s (ratio "
                 f"{cached['epoch_s'] / fa['epoch_s']:.2f}), peak RSS {fa['peak_rss_mb']:.0f} MB")
    return text


def growth(rows: list[dict]) -> None:
    """How each figure grows from the smallest count to the largest, per size and format."""
    by_kind: dict[tuple, list[dict]] = {}
    for row in rows:
        by_kind.setdefault((row["size"], row["fmt"]), []).append(row)
    for (size, fmt), group in by_kind.items():
        lo, hi = min(group, key=lambda r: r["count"]), max(group, key=lambda r: r["count"])
        if lo is hi:
            continue

        def ratio(get, lo=lo, hi=hi) -> str:
            return f"{get(hi) / get(lo):.1f}x"

        def above(r: dict) -> float:
            return (max(r["first"]["peak_rss_mb"], r["cached"]["peak_rss_mb"])
                    - r["cached"]["rss_before_data_mb"])

        figures = {
            "floor": lambda r: r["floor"]["decode_s"],
            "first read": lambda r: r["first"]["read_s"],
            "cached read": lambda r: r["cached"]["read_s"],
            "peak memory above": above,
            "epoch": lambda r: r["cached"]["epoch_s"]}
        if "fastai" in lo and "fastai" in hi:
            figures["fastai epoch"] = lambda r: r["fastai"]["epoch_s"]
        print(f"growth {fmt.upper()} {size}x{size}, {lo['count']:,} -> {hi['count']:,} images "
              f"({hi['count'] / lo['count']:.0f}x): "
              + ", ".join(f"{name} {ratio(get)}" for name, get in figures.items()))


if __name__ == "__main__":
    main()
