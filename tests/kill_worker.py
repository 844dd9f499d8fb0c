"""Trains on a small MNIST subset with checkpoints every 4 batches, logging each trained batch.

    python tests/kill_worker.py OUT_DIR [--resume] [--die-at EPOCH BATCH]

Each trained batch appends "epoch batch train_iter label_sum" to OUT_DIR/batches.log (flushed
at once, so it survives a SIGKILL). `--die-at` makes the process SIGKILL itself at the end of
that training batch (after its log line and any checkpoint): the test chooses where the kill
lands instead of racing a poll against the host's speed. At the end the final weights go to
OUT_DIR/final.safetensors, the activation statistics to OUT_DIR/stats.safetensors and the
Recorder's history to OUT_DIR/history.json.
"""

import os
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from convscope import ActivationStats, CheckpointCallback, DataLoaders, Learner, mnist, simple_cnn
from convscope.callback import Callback


class BatchLog(Callback):
    order = 95

    def __init__(self, path: Path):
        self.file = path.open("a", buffering=1)

    def after_step(self):
        learn = self.learn
        self.file.write(f"{learn.epoch} {learn.iter} {learn.train_iter} "
                        f"{int(learn.yb.sum())}\n")
        self.file.flush()


class DieAt(Callback):
    order = 100  # after the CheckpointCallback (90) has done its part of the batch

    def __init__(self, epoch: int, batch: int):
        self.at = (epoch, batch)

    def after_batch(self):
        if self.learn.training and (self.learn.epoch, self.learn.iter) == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    out = Path(sys.argv[1])
    resume = "--resume" in sys.argv
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # the same thread count in every process: bit-equal results
    data = mnist().subset(1536, 500, seed=3)
    torch.manual_seed(0)
    dls = DataLoaders.from_data(data, bs=64, seed=0)
    cbs = [CheckpointCallback(out / "ckpt.safetensors", every_batches=4),
           BatchLog(out / "batches.log"), ActivationStats(seed=0)]
    if "--die-at" in sys.argv:
        i = sys.argv.index("--die-at")
        cbs.append(DieAt(int(sys.argv[i + 1]), int(sys.argv[i + 2])))
    learn = Learner(dls, simple_cnn(), progress=False, cbs=cbs)
    learn.fit_one_cycle(3, 1e-2, resume=out / "ckpt.safetensors" if resume else None)
    save_file({k: v.contiguous() for k, v in learn.model.state_dict().items()},
              str(out / "final.safetensors"))
    learn.activation_stats.save(out / "stats.safetensors")
    learn.recorder.history().save(out / "history.json")


if __name__ == "__main__":
    main()
