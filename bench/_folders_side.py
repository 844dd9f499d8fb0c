"""One measurement of bench/folders.py, in its own process (its peak RSS is the process's).

    _folders_side.py floor FOLDER SIZE
        the decode floor: every image file decoded by PIL (opened, converted to RGB and
        resized to SIZE where it is not already) in a process per core, the pixels dropped:
        nothing else done. Every file is read once before the clock starts, so the files
        come from the page cache, as they do for the reads measured after this one.
    _folders_side.py convscope FOLDER SIZE CACHE
        convscope.image_folder(FOLDER) through the cache folder CACHE (timed), then one epoch
        of simple_cnn, fit_one_cycle(1, 0.01) at bs 512 in channels_last (timed).
Prints one JSON line: what it measured.
"""

import json
import os
import resource
import sys
import time
from multiprocessing import Pool
from pathlib import Path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _decode(args: tuple[str, int]) -> int:
    from PIL import Image

    path, size = args
    with Image.open(path) as im:
        if im.mode != "RGB":
            im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        return len(im.tobytes())


def floor(folder: Path, size: int) -> dict:
    files = sorted(str(p) for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))
    for f in files:  # into the page cache first: the floor is decoding, not a cold disk
        with open(f, "rb") as fh:
            fh.read()
    start = time.perf_counter()
    with Pool(len(os.sched_getaffinity(0))) as pool:
        n_bytes = sum(pool.imap_unordered(_decode, [(f, size) for f in files], chunksize=256))
    return {"images": len(files), "decode_s": time.perf_counter() - start, "bytes": n_bytes}


def convscope_side(folder: Path, size: int, cache: Path) -> dict:
    from convscope import ChannelsLast, DataLoaders, Learner, image_folder, simple_cnn

    model = simple_cnn(in_channels=3)
    before_data = peak_rss_mb()
    lines = []
    start = time.perf_counter()
    data = image_folder(folder, size=size, cache=cache, log=lines.append)
    read_s = time.perf_counter() - start
    after_read = peak_rss_mb()
    dls = DataLoaders.from_data(data, bs=512)
    learn = Learner(dls, model, cbs=[ChannelsLast()], progress=False)
    learn.fit_one_cycle(1, 0.01)
    n = len(data.y_train) + len(data.y_valid)
    return {"images": n, "read_s": read_s, "epoch_s": learn.recorder.values[-1]["time"],
            "accuracy": learn.recorder.values[-1]["accuracy"], "rss_before_data_mb": before_data,
            "rss_after_read_mb": after_read, "uint8_mb": data.x_train[0].numel() * n / 2**20,
            "log": lines}


if __name__ == "__main__":
    what, folder, size = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    if what == "floor":
        print(json.dumps(floor(folder, size)))
    else:
        print(json.dumps(convscope_side(folder, size, Path(sys.argv[4]))))
