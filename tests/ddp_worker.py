"""One process of a distributed run (start it with torchrun): trains on its shard and saves
its own weights and what it measured, so a test can compare the processes.

    python -m torch.distributed.run --standalone --nproc-per-node=2 tests/ddp_worker.py OUT
        [--hard F]

`--hard F`: with HardExamples(F), and each epoch's choice of images and the per-image losses
saved too.
"""

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from convscope import DataLoaders, HardExamples, Learner, mnist, simple_cnn
from convscope.callback import Callback
from convscope.distributed import Distributed, setup, teardown


class Choices(Callback):
    """Keeps the images each epoch draws from (None: all) and the losses they were chosen by."""

    order = 0  # after HardExamples (-4) has chosen

    def before_fit(self):
        self.chosen, self.losses = [], []

    def before_train(self):
        hard = self.learn.hard_examples
        self.chosen.append(None if hard.chosen is None else hard.chosen.tolist())
        self.losses.append(hard.losses.tolist())


def main() -> None:
    out = Path(sys.argv[1])
    hard = float(sys.argv[3]) if sys.argv[2:3] == ["--hard"] else None
    info = setup(torch.device("cpu"))
    data = mnist().subset(3072, 1000, seed=0)
    torch.manual_seed(info.rank)  # different initial weights: DDP must make them agree
    dls = DataLoaders.from_data(data, bs=64, seed=0)
    cbs = [Distributed(info)] + ([HardExamples(hard), Choices()] if hard else [])
    learn = Learner(dls, simple_cnn(), progress=False, cbs=cbs)
    learn.fit_one_cycle(3 if hard else 2, 1e-2)
    save_file({k: v.contiguous() for k, v in learn.model.state_dict().items()},
              str(out / f"rank{info.rank}.safetensors"))
    measured = {"values": learn.recorder.values, "valid_count": learn.recorder._vcount,
                "batches": len(learn.recorder.losses), "epoch_ends": learn.recorder.epoch_ends}
    if hard:
        measured.update(chosen=learn.choices.chosen, losses=learn.choices.losses,
                        final_losses=learn.hard_examples.losses.tolist())
    (out / f"rank{info.rank}.json").write_text(json.dumps(measured))
    teardown()


if __name__ == "__main__":
    main()
    # Leave as `convscope train`'s workers do (cli.run): without tearing the interpreter down.
    # Its finalisers with gloo's threads around aborted a process once in a full suite run
    # ("terminate called without an active exception", SIGABRT) after its files were written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
