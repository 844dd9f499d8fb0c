"""Which dataset a run's `--data` names, loaded and split as its config says."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from convscope import distributed
from convscope.config import TrainConfig
from convscope.data import MNIST_FILES, ImageData, idx_folder, missing_idx_files, mnist
from convscope.errors import UsageError
from convscope.image_folders import (
    image_folder,
    is_image_folder,
    valid_dir,
    wait_for_cache_writes,
)


def check_data(data: str | None) -> str:
    """What kind of dataset `--data` names ("mnist", "idx" or "images"), or a UsageError that
    says what is wrong with it: no such folder, a file, an IDX folder that lacks some of its
    four files (listed, never read as an image folder instead), or neither kind."""
    if data is None:
        return "mnist"
    folder = Path(data)
    if folder.is_file():
        raise UsageError(f"--data: {data!r} is a file; expected a folder holding the four "
                         f"MNIST-layout IDX files, or one folder of images per class")
    if not folder.is_dir():
        raise UsageError(f"--data: no such folder: {data!r}")
    missing = missing_idx_files(folder)
    if not missing:
        return "idx"
    if len(missing) < len(MNIST_FILES):
        have = [n for n in MNIST_FILES.values() if n not in missing]
        raise UsageError(f"--data: {data!r} is an incomplete IDX folder: it has "
                         f"{', '.join(have)} but lacks {', '.join(missing)} (raw or .gz)")
    if is_image_folder(folder):
        return "images"
    raise UsageError(f"--data: {data!r} holds neither the four MNIST-layout IDX files "
                     f"({', '.join(MNIST_FILES.values())}, raw or .gz) nor class folders of "
                     f"images")


def load_data(cfg: TrainConfig, log: Callable[[str], None] | None = print) -> ImageData:
    """The dataset named by the config, subset or split as asked; `log` gets an image
    folder's line about its cache.

    An image folder without a valid split is split by valid_pct (default 0.2); any other
    dataset holds out valid_pct of its training set only when valid_pct is given."""
    kind = check_data(cfg.data)
    if kind == "images":
        has_valid = valid_dir(Path(cfg.data)) is not None
        data = image_folder(cfg.data, size=cfg.size, valid_pct=cfg.valid_pct or 0.2,
                            seed=cfg.seed, skip_bad=cfg.skip_bad, log=log)
        if has_valid and cfg.valid_pct:
            data = data.split(cfg.valid_pct, seed=cfg.seed)
    else:
        data = mnist() if kind == "mnist" else idx_folder(cfg.data)
        if cfg.valid_pct:
            data = data.split(cfg.valid_pct, seed=cfg.seed)
    return data.subset(cfg.subset, seed=cfg.seed) if cfg.subset else data


def load_data_per_machine(cfg: TrainConfig, local_rank: int,
                          log: Callable[[str], None] | None = print) -> ImageData:
    """load_data in a process group: an image folder is decoded by one process per machine
    (local rank 0), which writes its cache, and read from that cache by the others once it is
    written, not decoded by every process at once. An error of the decoding process (a folder
    with unreadable files, say) stops every process with its message. Other datasets are
    read by each process."""
    if check_data(cfg.data) != "images":
        return load_data(cfg, log=log)
    data = error = None
    if local_rank == 0:
        try:
            data = load_data(cfg, log=log)
            wait_for_cache_writes()
        except UsageError as e:
            error = str(e)
    errors = [e for e in distributed.gather(error) if e is not None]
    if errors:
        raise UsageError(errors[0])
    # from the cache just written (decoded here only where it could not be written)
    return data if data is not None else load_data(cfg, log=None)


def held_out_name(cfg: TrainConfig) -> str:
    """What the valid set is, for messages: "test" for MNIST's test set (and an IDX folder's)
    and an image folder's test/ folder, "valid" for a valid/ folder or a held-out share."""
    if cfg.valid_pct:
        return "valid"
    if cfg.data is None or not missing_idx_files(cfg.data):
        return "test"
    folder = valid_dir(Path(cfg.data))
    return "test" if folder is not None and folder.name == "test" else "valid"
