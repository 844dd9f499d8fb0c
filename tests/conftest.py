"""Shared fixtures: tiny synthetic image sets for fast Learner tests, and IDX file writers."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from convscope.callback import Callback, CancelFitException
from convscope.data import MNIST_FILES, ImageData


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """An IDX file's bytes: magic (0, 0, dtype code, ndim), big-endian dims, then the data."""
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def write_idx_folder(folder: Path, n_train: int = 40, n_valid: int = 20, size: int = 28,
                     gz: bool = True, seed: int = 0) -> Path:
    """Write an MNIST-layout folder of random images whose label is set by a bright stripe."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_valid)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
        for i, lab in enumerate(labels):
            images[i, 2 * lab: 2 * lab + 3, :] = 255
        for kind, arr in (("images", images), ("labels", labels)):
            name = MNIST_FILES[f"{split}_{kind}"]
            payload = idx_bytes(arr)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)
    return folder


def stripes(n_train: int = 256, n_valid: int = 128, size: int = 16, seed: int = 0) -> ImageData:
    """A learnable toy task: 4 classes, each a horizontal bright stripe at its own height."""
    g = torch.Generator().manual_seed(seed)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 4, (n,), generator=g)
        x = torch.randint(0, 80, (n, 1, size, size), generator=g, dtype=torch.uint8)
        for i, lab in enumerate(y.tolist()):
            x[i, 0, 4 * lab: 4 * lab + 3] = 255
        return x, y

    xt, yt = make(n_train)
    xv, yv = make(n_valid)
    return ImageData(xt, yt, xv, yv, classes=["a", "b", "c", "d"], source="stripes")


def cli_error(err: str) -> str:
    """The line the CLI printed for an error, checked to be its own line with no traceback.

    Only the last line is read: a library may print a warning of its own on some machines,
    so the number of lines on stderr is not the CLI's to promise."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("convscope"), err
    return lines[-1]


@pytest.fixture
def toy() -> ImageData:
    return stripes()


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Keep every test's caches (decoded image folders, downloads) out of the user's home."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


class StopAt(Callback):
    """Stops a fit after training batch `iter` of epoch `epoch`, as a crash would there."""

    def __init__(self, epoch: int, iter: int) -> None:
        self.at = (epoch, iter)

    def after_batch(self) -> None:
        if self.learn.training and (self.learn.epoch, self.learn.iter) == self.at:
            raise CancelFitException
