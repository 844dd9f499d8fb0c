"""Starting a run in several processes, on one machine or several, through PyTorch's own
elastic launcher (what torchrun runs), called in-process so that its outcome becomes one line.

`convscope train --nproc N` starts N worker processes of `convscope train` on this machine;
with `--nnodes M --rdzv-endpoint HOST:PORT` (the same on every machine, `--node-rank 0` on the
machine at HOST) M machines join one group of N x M processes through a c10d rendezvous. Each
worker learns its rank and the world size from the environment the launcher sets, and
`--max-restarts K` lets the launcher restart a failed group up to K times: a restarted worker
reads TORCHELASTIC_RESTART_COUNT and resumes from the run folder's checkpoint (run/train.py).

Each process gets an equal share of the machine's cores as its torch threads (cores // N),
unless OMP_NUM_THREADS is set.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from convscope import run_folder
from convscope.errors import ConvscopeError, PeerLost, UsageError


class LaunchFailed(ConvscopeError):
    """The group of processes failed; the message says what was kept and what to run next.
    `exit_code` is the CLI's."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Launch:
    """How to start the processes of one run.

    Args:
        nproc: processes on this machine.
        nnodes: machines in the group (each runs the same command).
        node_rank: this machine's place, 0 on the machine at the rendezvous endpoint.
        endpoint: HOST:PORT of the c10d rendezvous (several machines), or None for this
            machine alone (a free local port).
        max_restarts: how often a failed group is restarted; each restart resumes from the
            last checkpoint.
        join_timeout: seconds for every machine to join.
    """

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    endpoint: str | None = None
    max_restarts: int = 0
    join_timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.nnodes > 1 and not self.endpoint:
            raise UsageError(f"--nnodes {self.nnodes}: expected --rdzv-endpoint HOST:PORT (the "
                             f"machine of --node-rank 0), received none")
        if not 0 <= self.node_rank < self.nnodes:
            raise UsageError(f"--node-rank: expected 0 to {self.nnodes - 1} (--nnodes "
                             f"{self.nnodes}), received {self.node_rank}")
        if self.endpoint is not None:
            host, _, port = self.endpoint.rpartition(":")
            # a host name or an address: letters, digits, dots, hyphens, an IPv6 in brackets
            named = re.fullmatch(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]", host)
            if not named or not port.isdigit() or not 0 < int(port) < 65536:
                raise UsageError(f"--rdzv-endpoint: expected HOST:PORT, e.g. 10.0.0.1:29500, "
                                 f"received {self.endpoint!r}")

    @property
    def several(self) -> bool:
        return self.nproc > 1 or self.nnodes > 1


# the launcher's own options, left out of the workers' command line
LAUNCH_FLAGS = ("--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint", "--rdzv-timeout",
                "--max-restarts")


def worker_argv(argv: list[str]) -> list[str]:
    """`argv` less the launcher's options (the workers learn the group from their
    environment; torchrun's parser would also take --nproc for its own)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in LAUNCH_FLAGS:
            skip = True
        elif not a.startswith(tuple(f"{f}=" for f in LAUNCH_FLAGS)):
            out.append(a)
    return out


def check_port_free(endpoint: str) -> None:
    """On the machine of node rank 0, the rendezvous port must be free: the launcher serves the
    rendezvous there (a port already taken would be joined as if it were ours)."""
    host, _, port = endpoint.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("" if host in ("localhost", "127.0.0.1", "0.0.0.0") else host, int(port)))
        except OSError as e:
            raise UsageError(f"--rdzv-endpoint {endpoint}: port {port} cannot be served here "
                             f"({e.strerror or e}): it is in use, or {host} is not this "
                             f"machine. Choose a free port, the same on every machine") from None


def wait_for_host(spec: Launch) -> None:
    """On a machine of node rank > 0: wait, up to the join timeout, for the machine of node
    rank 0 to serve the rendezvous. torch's store client would keep retrying for its own read
    timeout (60 s, twice) whatever --rdzv-timeout says; this keeps the promise of the flag."""
    import time

    host, _, port = spec.endpoint.rpartition(":")
    deadline = time.monotonic() + spec.join_timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise LaunchFailed(
                    f"the machine of node rank 0 did not serve the rendezvous at "
                    f"{spec.endpoint} within {spec.join_timeout:g} s. Start it with "
                    f"--node-rank 0 and the same --nnodes {spec.nnodes} and --rdzv-endpoint",
                    1) from None
            time.sleep(0.2)


def launch(spec: Launch, argv: list[str], run_dir: str | Path) -> int:
    """Start the workers of `convscope <argv>` and wait for them; return 0 when they all
    finished.

    Raises:
        LaunchFailed: the group failed and, where allowed, its restarts are used up; or the
            machines did not all join.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // spec.nproc))
    if spec.endpoint is not None and spec.node_rank == 0:
        check_port_free(spec.endpoint)
    elif spec.endpoint is not None:
        wait_for_host(spec)
    config = LaunchConfig(
        min_nodes=spec.nnodes, max_nodes=spec.nnodes, nproc_per_node=spec.nproc,
        run_id="convscope" if spec.endpoint else f"convscope-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d", rdzv_endpoint=spec.endpoint or "localhost:0",
        rdzv_configs={"join_timeout": spec.join_timeout, "timeout": spec.join_timeout,
                      **({"is_host": spec.node_rank == 0} if spec.endpoint else {})},
        max_restarts=spec.max_restarts, monitor_interval=0.1, start_method="spawn")
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "convscope",
                                                          *worker_argv(argv))
    except ChildFailedError as e:
        codes = {f.exitcode for f in e.failures.values()}
        if codes == {2}:  # the workers refused their input and said so, one line each
            raise LaunchFailed("the processes refused the run's settings (see above)", 2) \
                from None
        raise LaunchFailed(failed_message(e, spec, run_dir)) from None
    except RendezvousError as e:
        raise LaunchFailed(
            f"the {spec.nnodes} machines did not all join the rendezvous at {spec.endpoint} "
            f"within {spec.join_timeout:g} s ({type(e).__name__}). Start every machine with "
            f"the same --nnodes {spec.nnodes} and --rdzv-endpoint {spec.endpoint}, and "
            f"--node-rank 0 on the machine at that address", 1) from None
    return 0


def failed_message(error, spec: Launch, run_dir: str | Path) -> str:
    """What a failed group kept, and the command that continues it."""
    # The root cause, not a process that stopped because its peer had (PeerLost) or that the
    # launcher itself stopped with SIGTERM when it tore the group down: torch's first failure
    # goes by timestamps of one-second resolution, and those exit within the second the root
    # cause did.
    consequences = (PeerLost.exit_code, -signal.SIGTERM)
    causes = {r: f for r, f in error.failures.items()
              if f.exitcode not in consequences} or error.failures
    rank = min(causes, key=lambda r: (causes[r].timestamp, r))
    failure = causes[rank]
    how = (f"killed by signal {-failure.exitcode}" if failure.exitcode < 0
           else f"exit code {failure.exitcode}")
    restarts = (f"and its {spec.max_restarts} restart{'s' if spec.max_restarts != 1 else ''} "
                f"are used up" if spec.max_restarts else "(no --max-restarts)")
    checkpoint = Path(run_dir) / run_folder.CHECKPOINT
    pos = run_folder.checkpoint_position(run_dir)
    kept = ("no checkpoint was written yet" if pos is None
            else f"{checkpoint} holds epoch {pos['epoch']}, batch {pos['batch']}")
    return (f"training failed: process {rank} stopped ({how}) {restarts}; {kept}. Continue "
            f"with `convscope train --resume {run_folder.quoted(run_dir)}`.")
