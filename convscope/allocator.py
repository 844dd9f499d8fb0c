"""Keeping freed memory in the process while training, on Linux with glibc.

A training step allocates and frees the same few-megabyte buffers (activations, gradients)
every batch. glibc's malloc hands buffers over its mmap threshold back to the kernel on free
and trims the heap's free top, so part of that memory is faulted in again, page by page:
about 1,200 page faults a training step of simple_cnn at batch size 512 under glibc's own
thresholds, against about 100 with them raised, and an epoch in 0.90-0.94 of the time
(bench/allocator.py measures it). `kept_memory()` raises the thresholds for the length of a
fit, so freed buffers are reused instead, and on leaving gives the free memory back
(malloc_trim).

Setting a threshold turns glibc's own adjustment of them off for the rest of the process, and
its starting values (128 KiB) would then hand every buffer over 128 KiB back to the kernel on
free: each convolution after a fit (validation, predictions, test-time augmentation, a
notebook's next cell) would fault its output in anew and take 3-6x as long. So leaving sets the
values glibc's adjustment reaches once it has freed a buffer of its largest mmap threshold
(32 MiB, trimming the heap's free top beyond twice that): a process after a fit behaves as a
glibc process that has run such work. It does nothing where the C library is not glibc, or
where the user set malloc's thresholds themselves (MALLOC_*_ or GLIBC_TUNABLES).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import threading
from collections.abc import Iterator

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # mallopt's parameter numbers
KEPT = {M_MMAP_THRESHOLD: 256 << 20, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 64 << 20}
# after a fit: glibc's own values once its adjustment has seen a 32 MiB buffer freed (the
# largest mmap threshold it adjusts to on 64-bit, trimming beyond twice that; top pad default)
AFTER = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20, M_TOP_PAD: 128 << 10}
# the environment through which a user sets malloc's thresholds: then they are left alone
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                 "MALLOC_MMAP_MAX_")
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


def user_settings() -> list[str]:
    """The environment variables through which the user set malloc's thresholds."""
    named = [k for k in USER_SETTINGS if k in os.environ]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        named.append("GLIBC_TUNABLES")
    return named


def available() -> bool:
    """Whether kept_memory() changes anything here (Linux with glibc, malloc's thresholds not
    set by the user)."""
    return _glibc() is not None and not user_settings()


@contextlib.contextmanager
def kept_memory() -> Iterator[None]:
    """Within the block, freed memory stays in the process for reuse; on leaving the
    outermost block it is given back, and the thresholds are set to those glibc reaches by
    itself (see the module docstring). Nested blocks (a fit inside a fit) share the
    outermost's setting."""
    global _depth
    libc = _glibc()
    if libc is None or user_settings():
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
                for param, value in AFTER.items():
                    libc.mallopt(param, value)
                libc.malloc_trim(0)
