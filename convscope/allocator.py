"""Keeping freed memory in the process while training, on Linux with glibc.

A training step allocates and frees the same few-megabyte buffers (activations, gradients)
every batch. glibc's malloc hands buffers over its mmap threshold back to the kernel on free
and trims the heap's free top, so each batch faults the same memory in again, page by page:
5,000-9,000 page faults a training step of simple_cnn at batch size 512, and an epoch taking
1.5-1.8x as long, worse the longer the process has run (bench/allocator.py measures it).
`kept_memory()` raises the thresholds for the length of a fit, so freed buffers are reused
instead, and on leaving gives the free memory back (malloc_trim) and resets the thresholds to
glibc's defaults. It does nothing where the C library is not glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
import threading
from collections.abc import Iterator

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # mallopt's parameter numbers
DEFAULT = 128 * 1024  # glibc's default for all three
KEPT = {M_MMAP_THRESHOLD: 256 << 20, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 64 << 20}
# glibc refuses an mmap threshold above its largest heap size / 2 on some versions: then this
FALLBACK_MMAP = 32 << 20

_lock = threading.Lock()
_depth = 0


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it)
        libc.mallopt, libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def available() -> bool:
    """Whether kept_memory() changes anything here (Linux with glibc)."""
    return _glibc() is not None


@contextlib.contextmanager
def kept_memory() -> Iterator[None]:
    """Within the block, freed memory stays in the process for reuse; on leaving the
    outermost block it is given back and glibc's defaults restored. Nested blocks (a fit
    inside a fit) share the outermost's setting."""
    global _depth
    libc = _glibc()
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            for param, value in KEPT.items():
                if not libc.mallopt(param, value) and param == M_MMAP_THRESHOLD:
                    libc.mallopt(param, FALLBACK_MMAP)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for param in KEPT:
                    libc.mallopt(param, DEFAULT)
                libc.malloc_trim(0)
