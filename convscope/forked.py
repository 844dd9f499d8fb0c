"""forked_map: independent CPU-bound jobs spread over the machine's cores, in forked copies of
this process, with the parent as the fallback for anything a copy fails to deliver.

What it is for: drawing a run report's twenty figures. matplotlib draws in single-threaded
Python (about 2 s for a default MNIST run on a 2-core machine), so after training the other core
sits idle. A forked copy starts in milliseconds with every module and the run's data already in
memory (a spawned process would spend a second importing torch and matplotlib); each copy draws
its share and sends the results back through a pipe.

The copies set torch to one thread (an OpenMP thread pool does not survive fork), ignore
Ctrl-C (the parent gets it too, stops them and handles it) and leave with `os._exit`, running no
exit handler of the parent's. Any job a copy does not deliver (it crashed, raised or took longer
than `timeout`) is run again in the parent, so the results never depend on the copies: the
worst case is the serial time plus the timeout. Serial where fork is not the platform's safe
default (anything but Linux), with one core, or for a single job.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def become_copy() -> None:
    """What a forked copy does first: leave Ctrl-C to the parent (which stops the copies and
    handles it) and run torch on one thread (an OpenMP thread pool does not survive fork)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _in_copy(fn: Callable[[T], R], items: Sequence[T], share: list[int], write_fd: int) -> None:
    """The forked copy's whole life: its share of the jobs, pickled into the pipe."""
    code = 1
    try:
        become_copy()
        payload = pickle.dumps({i: fn(items[i]) for i in share})
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(payload)
        code = 0
    finally:
        os._exit(code)


def _receive(read_fd: int, deadline: float) -> dict | None:
    """What a copy sent, or None if it sent nothing usable before the deadline."""
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([read_fd], [], [], left)[0]:
            return None
        chunk = os.read(read_fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    try:
        return pickle.loads(b"".join(chunks))
    except Exception:  # a copy that died mid-write
        return None


def forked_map(fn: Callable[[T], R], items: Sequence[T], timeout: float = 120.0) -> list[R]:
    """[fn(x) for x in items], the jobs dealt round-robin to this process and a forked copy per
    further core. `fn`'s results must pickle; `fn` must not depend on running in this process
    (it may write nothing the parent needs to see)."""
    items = list(items)
    n = min(cores(), len(items))
    if n < 2 or not sys.platform.startswith("linux"):
        return [fn(x) for x in items]
    shares = [list(range(k, len(items), n)) for k in range(n)]
    copies: list[tuple[int, int, list[int]]] = []  # pid, read end, share
    results: dict[int, R] = {}
    try:
        for share in shares[1:]:
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # the copy
                os.close(read_fd)
                _in_copy(fn, items, share, write_fd)
            os.close(write_fd)
            copies.append((pid, read_fd, share))
        for i in shares[0]:
            results[i] = fn(items[i])
        deadline = time.monotonic() + timeout
        for _, read_fd, share in copies:
            got = _receive(read_fd, deadline)
            if got is not None and sorted(got) == share:
                results.update(got)
    finally:
        for pid, read_fd, _ in copies:
            os.close(read_fd)
            try:
                os.kill(pid, signal.SIGKILL)  # done (a no-op) or stuck: either way, gone
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
    for i in range(len(items)):  # what no copy delivered
        if i not in results:
            results[i] = fn(items[i])
    return [results[i] for i in range(len(items))]
