"""Decoding many image files into one uint8 array, on every core.

A folder of small images costs more in Python than in the decoder: Pillow opens the file,
parses its header and builds the image object under the interpreter lock, so threads share
one core for most of it. The decoding is therefore spread over forked copies of this process
(one per further core; the process itself takes a share too), each writing its images
straight into one shared buffer: a memory-mapped file or an anonymous shared mapping, so no
image is sent through a pipe or held twice. Only the messages of files that could not be read
come back, pickled. A copy that dies (killed, out of memory) leaves its share to this process,
which decodes what is missing: the result never depends on the copies.

Serial where fork is not the platform's safe default (anything but Linux), with one core, or
for few files.
"""

from __future__ import annotations

import mmap
import os
import pickle
import select
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from convscope.data import to_8bit
from convscope.errors import UsageError
from convscope.forked import become_copy, cores

# below this many files a fork costs more than it saves
_FORK_FROM = 256
# how often (in images) a worker publishes its count for the progress bar
_PUBLISH_EVERY = 32


def decode_one(path: str | Path, size: int, mode: str) -> np.ndarray | str:
    """The image as uint8 (size, size) or (size, size, 3), or an error message.

    Runs once per file of a folder, so the common case (a file already in `mode`) takes the
    fewest steps: its bytes straight into an array, not numpy's array protocol (5 us an
    image of 75, measured on 32x32 PNG files)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode != mode:
                im = to_8bit(im)  # 16-bit greyscale scaled, not clipped at 255
                if im.mode != mode:
                    im = im.convert(mode)
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            pixels = np.frombuffer(im.tobytes(), dtype=np.uint8)
            return pixels.reshape((size, size) if mode == "L" else (size, size, 3))
    except Image.DecompressionBombError as e:
        return f"refused, too many pixels (a decompression bomb?): {e}"
    except UsageError as e:  # a mode with no 8-bit mapping
        return str(e)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"cannot be read as an image: {e}"


def shared_buffer(shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed uint8 array in anonymous memory that forked copies write into and this
    process sees (or that is simply written in no order)."""
    size = max(1, int(np.prod(shape)))
    # mapped in whole at once: a page at a time, on first write, costs several times more
    # on a virtual machine, and rows are written in no order
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    buf = mmap.mmap(-1, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    return np.frombuffer(buf, dtype=np.uint8, count=int(np.prod(shape))).reshape(shape)


def _is_shared(a: np.ndarray) -> bool:
    """Whether writes to `a` in a forked copy reach this process (a shared mapping)."""
    if isinstance(a, np.memmap):
        return True
    while isinstance(a, np.ndarray):
        a = a.base
    if isinstance(a, memoryview):
        a = a.obj
    return isinstance(a, mmap.mmap)


def _decode_share(files: Sequence[str | Path], share: Sequence[int], out: np.ndarray, size: int,
                  mode: str, tick: Callable[[int], None]) -> list[tuple[int, str]]:
    """Decode files[i] into out[i] for i in `share`; the (i, message) of those that failed."""
    bad = []
    for n, i in enumerate(share, 1):
        d = decode_one(files[i], size, mode)
        if isinstance(d, str):
            bad.append((i, d))
        else:
            out[i] = d[None] if d.ndim == 2 else d.transpose(2, 0, 1)
        if n % _PUBLISH_EVERY == 0:
            tick(n)
    tick(len(share))
    return bad


def _in_copy(files, share, out, size, mode, counts, slot: int, write_fd: int) -> None:
    code = 1
    try:
        become_copy()

        def tick(n: int) -> None:
            counts[slot] = n

        bad = _decode_share(files, share, out, size, mode, tick)
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(pickle.dumps(bad))
        code = 0
    finally:
        os._exit(code)


def decode_into(out: np.ndarray, files: Sequence[str | Path], size: int, mode: str,
                progress: Callable[[int], None] | None = None) -> list[tuple[int, str]]:
    """Decode files[i] into out[i] (uint8 (N, C, size, size), shared with forked copies when
    it is a `shared_buffer` or a memory-mapped file), on every core.

    Args:
        progress: called now and then with the number of files decoded so far.
    Returns:
        (index, message) of each file that could not be read, in file order; its row is left
        as it was.
    """
    files = list(files)
    n = min(cores(), len(files))
    shared = _is_shared(out)
    report = progress or (lambda done: None)
    if n < 2 or len(files) < _FORK_FROM or not shared or not sys.platform.startswith("linux"):
        return _decode_share(files, range(len(files)), out, size, mode, report)
    shares = [range(w, len(files), n) for w in range(n)]
    counts = shared_buffer((n * 8,)).view(np.int64)
    children = []
    try:
        for w in range(1, n):
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                _in_copy(files, shares[w], out, size, mode, counts, w, write_fd)
            os.close(write_fd)
            children.append((pid, read_fd, w))
        last = [0.0]

        def tick(done: int) -> None:
            counts[0] = done
            now = time.monotonic()
            if now - last[0] > 0.1:
                last[0] = now
                report(int(counts.sum()))

        bad = _decode_share(files, shares[0], out, size, mode, tick)
        while children:
            pid, read_fd, w = children[0]
            chunks = []
            while True:  # read until the copy closes its end; the bar moves meanwhile
                if select.select([read_fd], [], [], 0.05)[0]:
                    chunk = os.read(read_fd, 1 << 16)
                    if not chunk:
                        break
                    chunks.append(chunk)
                report(int(counts.sum()))
            os.waitpid(pid, 0)
            os.close(read_fd)
            children.pop(0)
            try:
                bad += pickle.loads(b"".join(chunks))
            except Exception:  # the copy died before it sent its list: its share again here
                bad += _decode_share(files, shares[w], out, size, mode, lambda done: None)
        report(len(files))
    finally:
        for pid, read_fd, _ in children:  # interrupted: stop the copies, close their pipes
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            os.close(read_fd)
    return sorted(bad)
