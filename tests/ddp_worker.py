"""One process of a distributed run (start it with torchrun): trains on its shard and saves
its own weights and what it measured, so a test can compare the processes.

    python -m torch.distributed.run --standalone --nproc-per-node=2 tests/ddp_worker.py OUT
"""

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from convscope import DataLoaders, Learner, mnist, simple_cnn
from convscope.distributed import Distributed, setup, teardown


def main() -> None:
    out = Path(sys.argv[1])
    info = setup(torch.device("cpu"))
    data = mnist().subset(3072, 1000, seed=0)
    torch.manual_seed(info.rank)  # different initial weights: DDP must make them agree
    dls = DataLoaders.from_data(data, bs=64, seed=0)
    learn = Learner(dls, simple_cnn(), progress=False, cbs=[Distributed(info)])
    learn.fit_one_cycle(2, 1e-2)
    save_file({k: v.contiguous() for k, v in learn.model.state_dict().items()},
              str(out / f"rank{info.rank}.safetensors"))
    (out / f"rank{info.rank}.json").write_text(json.dumps({
        "values": learn.recorder.values, "valid_count": learn.recorder._vcount,
        "batches": len(learn.recorder.losses)}))
    teardown()


if __name__ == "__main__":
    main()
    # Leave as `convscope train`'s workers do (cli.run): without tearing the interpreter down.
    # Its finalisers with gloo's threads around aborted a process once in a full suite run
    # ("terminate called without an active exception", SIGABRT) after its files were written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
