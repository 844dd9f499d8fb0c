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
        dist.init_process_group(backend)
    return info


def teardown() -> None:
    """Wait for every process, then leave the group."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


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
        learn.total_iters = learn.n_epoch * len(learn.dls.train)  # the shard's length

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
