"""Trains on a small MNIST subset with checkpoints every 4 batches, logging each trained batch.

    python tests/kill_worker.py OUT_DIR [--resume]

Each trained batch appends "epoch batch train_iter label_sum" to OUT_DIR/batches.log (flushed
at once, so it survives a SIGKILL); the final weights go to OUT_DIR/final.safetensors.
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from convscope import CheckpointCallback, DataLoaders, Learner, mnist, simple_cnn
from convscope.learner import Callback


class BatchLog(Callback):
    order = 95

    def __init__(self, path: Path):
        self.file = path.open("a", buffering=1)

    def after_step(self):
        learn = self.learn
        self.file.write(f"{learn.epoch} {learn.iter} {learn.train_iter} "
                        f"{int(learn.yb.sum())}\n")
        self.file.flush()


def main() -> None:
    out = Path(sys.argv[1])
    resume = "--resume" in sys.argv
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # the same thread count in every process: bit-equal results
    data = mnist().subset(1536, 500, seed=3)
    torch.manual_seed(0)
    dls = DataLoaders.from_data(data, bs=64, seed=0)
    learn = Learner(dls, simple_cnn(), progress=False,
                    cbs=[CheckpointCallback(out / "ckpt.safetensors", every_batches=4),
                         BatchLog(out / "batches.log")])
    learn.fit_one_cycle(3, 1e-2, resume=out / "ckpt.safetensors" if resume else None)
    save_file({k: v.contiguous() for k, v in learn.model.state_dict().items()},
              str(out / "final.safetensors"))


if __name__ == "__main__":
    main()
