"""torch.distributed: set-up and tear-down of the process group, and the Distributed callback.

`torchrun --nproc-per-node=N -m convscope train ...` starts N processes with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT set; `convscope train --nproc N` runs that for you.
Each process holds the whole dataset in memory and trains on its shard of the batches; the
model is wrapped in DistributedDataParallel, which averages the gradients, so every process
takes the same steps and ends with the same weights. Backend: gloo on the CPU, nccl on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from convscope.callback import Callback
from convscope.errors import UsageError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun for more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> DistInfo:
    """Join the process group torchrun prepared (gloo for CPU, nccl for CUDA)."""
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
               if v not in os.environ]
    if missing:
        raise UsageError(f"Distributed training needs the variables torchrun sets; missing "
                         f"{', '.join(missing)}. Start it with `convscope train --nproc N` or "
                         f"`torchrun --nproc-per-node=N -m convscope train`.")
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                    int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend, store=_store(info), rank=info.rank,
                                world_size=info.world_size)
    return info


def _store(info: DistInfo) -> dist.Store:
    """The key-value store the processes meet in, its keys prefixed by the restart count.

    torch 2.13's default (env://) store keeps the keys of an earlier attempt of a restarted
    group: the new gloo group then connects to the address of the process that died
    ("Connection refused"; with plain torchrun --max-restarts 1, 3 of 5 restarts failed here).
    Under the elastic launcher the store is the agent's (we join it as a client); under a bare
    MASTER_ADDR/MASTER_PORT, rank 0 serves it."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          info.world_size, is_master=not agent and info.rank == 0,
                          timeout=timedelta(minutes=10))
    return dist.PrefixStore(f"convscope/attempt_{restart_count()[0]}", store)


def teardown(ok: bool = True) -> None:
    """Leave the group: after a finished run, once every process is there; after a failure
    at once (a barrier would wait for processes that are gone)."""
    if dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def restart_count() -> tuple[int, int]:
    """(restarts so far, restarts allowed) of this worker group, as the elastic launcher
    (torchrun, `convscope train --max-restarts`) sets them; (0, 0) outside it."""
    return (int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
            int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")))


def same_everywhere(value):
    """Rank 0's `value` in every process (a broadcast of a picklable value made by convscope
    itself); `value` as it is outside a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value) -> list:
    """Every process's `value` (picklable, made by convscope itself), by rank; [value] outside
    a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, value)
    return every


def check_same_config(config: dict, ignore: tuple[str, ...] = ()) -> None:
    """Refuse to train when the processes (machines started with their own command lines)
    were given different settings; `ignore` names those that may differ (paths).

    Raises:
        UsageError: in every process, naming each setting and its values by rank.
    """
    every = gather({k: v for k, v in config.items() if k not in ignore})
    differ = sorted({k for c in every for k in c if c.get(k) != every[0].get(k)})
    if differ:
        detail = "; ".join(f"{k}: " + ", ".join(f"rank {r} {c.get(k)!r}"
                                                for r, c in enumerate(every)) for k in differ)
        raise UsageError(f"the processes were started with different settings ({detail}). "
                         f"Start every machine with the same options.")


class Distributed(Callback):
    """Reached as `learn.distributed`: DistributedDataParallel for the length of a fit.

    Args:
        info: this process's rank and the world size (see `setup`).
        sync_bn: convert batchnorm layers to SyncBatchNorm, whose statistics span the
            batches of every process (slower: one more collective per batchnorm layer).
    """

    order = -5  # after ChannelsLast (-10) has set the memory format the wrapper will see
    run_in_lr_find = False

    def __init__(self, info: DistInfo, sync_bn: bool = False) -> None:
        self.info, self.sync_bn = info, sync_bn
        self.inner: nn.Module | None = None

    def before_fit(self) -> None:
        learn = self.learn
        if self.sync_bn and learn.dls.device.type != "cuda":
            raise UsageError("sync_bn needs CUDA: torch's SyncBatchNorm runs only on GPUs. "
                             "Drop --sync-bn on the CPU.")
        self.inner = learn.model
        if self.sync_bn:
            self.inner = nn.SyncBatchNorm.convert_sync_batchnorm(self.inner)
            learn.model = self.inner
        cuda = learn.dls.device.type == "cuda"
        self.wrapped = nn.parallel.DistributedDataParallel(
            self.inner, device_ids=[learn.dls.device.index or 0] if cuda else None)
        learn.model = self.wrapped
        learn.dls.train.shard(self.info.rank, self.info.world_size)
        learn.dls.valid.shard(self.info.rank, self.info.world_size)

    def before_validate(self) -> None:
        # each process evaluates its own valid shard with the plain model: no collectives
        # inside the loop, so shards of unequal length are fine
        self.learn.model = self.inner

    def after_validate(self) -> None:
        recorder = getattr(self.learn, "recorder", None)
        if recorder is not None:
            recorder.reduce_valid(dist.all_reduce)
        self.learn.model = self.wrapped

    def after_fit(self) -> None:
        if self.inner is None:  # before_fit never ran
            return
        self.learn.model = self.inner
        self.learn.dls.train.shard(0, 1)
        self.learn.dls.valid.shard(0, 1)
