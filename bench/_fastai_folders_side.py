"""fastai's side of bench/folders.py (runs in bench/.venv-fastai): ImageDataLoaders.from_folder
on the same folder (20% held out, seed 0, bs 512, its default workers: one per core), timed,
then one epoch of the same simple_cnn (the chapter's blocks with a colour input and an average
pool before Flatten, as convscope's simple_cnn has for input larger than 28x28),
fit_one_cycle(1, 0.01). fastai decodes every image on every epoch: it has no cache to read.
Prints one JSON line: what it measured."""

import json
import resource
import sys
import time
from pathlib import Path

import torch.nn.functional as F
from fastai.vision.all import Callback, ImageDataLoaders, Learner, accuracy
from torch import nn


def conv(ni, nf, ks=3, act=True):  # the chapter's block: conv, batchnorm, ReLU
    layers = [nn.Conv2d(ni, nf, ks, stride=2, padding=ks // 2), nn.BatchNorm2d(nf)]
    return nn.Sequential(*layers, *([nn.ReLU()] if act else []))


class EpochTimes(Callback):
    def before_epoch(self):
        self.t = time.perf_counter()

    def after_epoch(self):
        self.seconds = time.perf_counter() - self.t


def main() -> None:
    folder = Path(sys.argv[1])
    start = time.perf_counter()
    dls = ImageDataLoaders.from_folder(folder, valid_pct=0.2, seed=0, bs=512)
    read_s = time.perf_counter() - start
    model = nn.Sequential(conv(3, 8, ks=5), conv(8, 16), conv(16, 32), conv(32, 64),
                          conv(64, 10, act=False), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    timer = EpochTimes()
    learn = Learner(dls, model, loss_func=F.cross_entropy, metrics=accuracy, cbs=[timer])
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 0.01)
    print(json.dumps({"images": len(dls.train_ds) + len(dls.valid_ds), "read_s": read_s,
                      "epoch_s": timer.seconds,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
