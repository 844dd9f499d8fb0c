"""fastai's side of bench/vs_fastai.py (runs in bench/.venv-fastai): the book's recipe, fed
either as the book does (MNIST PNG files through its DataBlock: mode "png") or at fastai's
fastest (the same MNIST as normalised in-memory tensors through fastai's DataLoader: mode
"tensor"). Prints one JSON line: what it measured."""

import gzip
import json
import sys
import time
from pathlib import Path

start = time.perf_counter()
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from fastai.data.core import DataLoaders  # noqa: E402
from fastai.data.load import DataLoader  # noqa: E402
from fastai.vision.all import (  # noqa: E402
    Callback,
    CategoryBlock,
    DataBlock,
    GrandparentSplitter,
    ImageBlock,
    Learner,
    Normalize,
    PILImageBW,
    accuracy,
    get_image_files,
    parent_label,
)
from torch import nn  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

imported = time.perf_counter() - start


def conv(ni, nf, ks=3, act=True):  # the chapter's block: conv, batchnorm, ReLU
    layers = [nn.Conv2d(ni, nf, ks, stride=2, padding=ks // 2), nn.BatchNorm2d(nf)]
    return nn.Sequential(*layers, *([nn.ReLU()] if act else []))


class EpochTimes(Callback):
    def before_fit(self):
        self.times = []

    def before_epoch(self):
        self.t = time.perf_counter()

    def after_epoch(self):
        self.times.append(time.perf_counter() - self.t)


def idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped), the layout MNIST ships in: magic, big-endian dims, then bytes."""
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def tensor_dls(idx_dir: Path, bs: int) -> DataLoaders:
    x = torch.from_numpy(idx(idx_dir / "train-images-idx3-ubyte.gz").copy()).float()
    mean, std = x.mean() / 255, x.std() / 255

    def split(images: str, labels: str) -> TensorDataset:
        xs = torch.from_numpy(idx(idx_dir / images).copy()).float().div(255).sub(mean).div(std)
        ys = torch.from_numpy(idx(idx_dir / labels).astype(np.int64))
        return TensorDataset(xs.unsqueeze(1), ys)

    train = split("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
    valid = split("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    return DataLoaders(DataLoader(train, bs=bs, shuffle=True, drop_last=True),
                       DataLoader(valid, bs=bs))


def main() -> None:
    mode, path = sys.argv[1], Path(sys.argv[2])
    epochs, lr, bs, device = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    if mode == "png":
        block = DataBlock(blocks=(ImageBlock(cls=PILImageBW), CategoryBlock),
                          get_items=get_image_files, get_y=parent_label,
                          splitter=GrandparentSplitter("training", "testing"),
                          batch_tfms=Normalize())
        dls = block.dataloaders(path, bs=bs, device=device)
    else:
        dls = tensor_dls(path, bs).to(device)
    model = nn.Sequential(conv(1, 8, ks=5), conv(8, 16), conv(16, 32), conv(32, 64),
                          conv(64, 10, act=False), nn.Flatten())
    timer = EpochTimes()
    learn = Learner(dls, model, loss_func=F.cross_entropy, metrics=accuracy, cbs=[timer])
    fit_start = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(epochs, lr)
    fit_s = time.perf_counter() - fit_start
    epoch_s = list(timer.times)  # before validate(), which runs the callbacks' events again
    acc = float(learn.validate()[1])
    print(json.dumps({"import_s": imported, "fit_s": fit_s, "epoch_s": epoch_s,
                      "accuracy": acc}))


if __name__ == "__main__":
    main()
