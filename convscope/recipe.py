"""The main job: a TrainConfig in, a trained model and a run folder out.

The CLI parses arguments into a TrainConfig and calls `run_training`; a script can do the same.
The run folder holds:
    config.json      the settings of the run
    metrics.csv      one row per epoch: epoch, train_loss, valid_loss, accuracy, time
    model.safetensors  the trained weights (no pickle: safe to load from anyone); its metadata
                     holds the classes and the input normalisation (mean, std)
    history.json     the Recorder's per-batch losses and hyperparameters
    activation_stats.safetensors  what ActivationStats recorded (unless turned off)
    checkpoint.safetensors  the training state after the last epoch (or batch, with
                     checkpoint_every): `--resume RUN_DIR` continues from it
    show_batch.png, loss.png, sched.png
    report.html      everything above on one page, the diagnosis at the top
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from convscope import defaults
from convscope.data import DataLoaders, ImageData, idx_folder, mnist
from convscope.errors import TrainingInterrupted, UsageError
from convscope.files import atomic_write_bytes
from convscope.learner import Learner
from convscope.models import simple_cnn


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run.

    Args:
        data: a folder holding the four IDX files of an MNIST-layout dataset, or a folder of
            images in class folders (see `image_folder`), or None for MNIST (`mnist()`).
        epochs: passes over the training set.
        lr: peak learning rate of the 1cycle schedule.
        bs: training batch size.
        seed: seeds the model's initial weights and the shuffling.
        out: the run folder to write.
        device: "cpu", "cuda" or "cuda:N".
        subset: train on this many random training images (all when None).
        valid_pct: hold out this share of the training set as valid set instead of the test set.
        channels_last: NHWC memory order (faster for convolutions on CPU and GPU).
        stats: record ActivationStats (for the diagnosis and the report's layer plots).
        checkpoint_every: save checkpoint.safetensors every N training batches as well as at
            the end of every epoch.
        size: image folders are resized to size x size.
        skip_bad: leave out unreadable image files (listed) instead of stopping.
        augment: random crops (padding size//14) and flips of training batches.
        precision: "fp32", or mixed precision "bf16" (CPU or CUDA) or "fp16" (CUDA).
        sync_bn: with several processes, batchnorm statistics over all of their batches.
    """

    data: str | None = None
    epochs: int = defaults.EPOCHS
    lr: float = defaults.LR
    bs: int = defaults.BS
    seed: int = 0
    out: str = "runs/latest"
    device: str = "cpu"
    subset: int | None = None
    valid_pct: float | None = None
    channels_last: bool = True
    stats: bool = True
    checkpoint_every: int | None = None
    size: int = 28
    skip_bad: bool = False
    augment: bool = False
    precision: str = "fp32"
    sync_bn: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise UsageError(f"Epochs must be >= 0. Received: epochs={self.epochs}.")
        if not self.lr > 0:
            raise UsageError(f"Learning rate must be > 0. Received: lr={self.lr}.")
        if self.bs < 1:
            raise UsageError(f"Batch size must be >= 1. Received: bs={self.bs}.")
        if self.subset is not None and self.subset < 1:
            raise UsageError(f"subset must be >= 1. Received: subset={self.subset}.")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise UsageError(f"Unknown precision. Received: {self.precision!r}. Choose fp32, "
                             f"bf16 or fp16.")
        if self.precision == "fp16" and resolve_device(self.device).type != "cuda":
            raise UsageError(f"fp16 needs --device cuda (received {self.device!r}): on a CPU "
                             f"it runs about 6x slower than fp32. Use --precision fp32 or "
                             f"bf16 there.")
        if self.size < 1:
            raise UsageError(f"size must be >= 1. Received: size={self.size}.")
        if self.sync_bn and resolve_device(self.device).type != "cuda":
            raise UsageError("sync_bn needs --device cuda: torch's SyncBatchNorm runs only on "
                             "GPUs.")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise UsageError(f"checkpoint_every must be >= 1. Received: "
                             f"{self.checkpoint_every}.")
        if self.valid_pct is not None and not 0 < self.valid_pct < 1:
            raise UsageError(f"valid_pct must be in (0, 1). Received: {self.valid_pct}.")
        resolve_device(self.device)


def resolve_device(name: str) -> torch.device:
    """A torch.device for `name`, refusing one this machine does not have."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"Unknown device. Received: device={name!r}. Choose cpu, cuda or "
                         f"cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"CUDA is not available on this machine. Received: device={name!r}. "
                         f"Use --device cpu.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"No such GPU. Received: device={name!r}; this machine has "
                         f"{torch.cuda.device_count()}.")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"Unsupported device. Received: device={name!r}. Choose cpu or cuda.")
    return dev


def held_out_name(cfg: TrainConfig) -> str:
    """What the valid set is, for messages: "test" for MNIST's test set (and an IDX folder's)
    and an image folder's test/ folder, "valid" for a valid/ folder or a held-out share."""
    from convscope.data import missing_idx_files
    from convscope.image_folders import valid_dir

    if cfg.valid_pct:
        return "valid"
    if cfg.data is None or not missing_idx_files(cfg.data):
        return "test"
    folder = valid_dir(Path(cfg.data))
    return "test" if folder is not None and folder.name == "test" else "valid"


def load_data(cfg: TrainConfig) -> ImageData:
    """The dataset named by the config, subset or split as asked.

    An image folder without a valid split is split by valid_pct (default 0.2); any other
    dataset holds out valid_pct of its training set only when valid_pct is given."""
    from convscope.data import missing_idx_files
    from convscope.image_folders import image_folder, is_image_folder, valid_dir

    if cfg.data is None:
        data = mnist()
    elif not missing_idx_files(cfg.data):
        data = idx_folder(cfg.data)
    elif is_image_folder(cfg.data):
        has_valid = valid_dir(Path(cfg.data)) is not None
        data = image_folder(cfg.data, size=cfg.size, valid_pct=cfg.valid_pct or 0.2,
                            seed=cfg.seed, skip_bad=cfg.skip_bad)
        if has_valid and cfg.valid_pct:
            data = data.split(cfg.valid_pct, seed=cfg.seed)
        return data.subset(cfg.subset, seed=cfg.seed) if cfg.subset else data
    else:
        raise UsageError(f"--data {cfg.data!r} is neither an MNIST-layout folder (it lacks "
                         f"{', '.join(missing_idx_files(cfg.data))}) nor a folder of class "
                         f"folders of images.")
    if cfg.valid_pct:
        data = data.split(cfg.valid_pct, seed=cfg.seed)
    if cfg.subset:
        data = data.subset(cfg.subset, seed=cfg.seed)
    return data


@dataclass
class TrainResult:
    run_dir: Path
    accuracy: float
    train_seconds: float
    values: list[dict] = field(default_factory=list)


def make_learner(data: ImageData, cfg: TrainConfig, progress: bool = True,
                 stats: bool | None = None) -> Learner:
    """The recipe's Learner: simple_cnn with batchnorm, AdamW, channels_last when asked."""
    from convscope.callbacks import ActivationStats, ChannelsLast
    from convscope.callbacks.augment import BatchAugment
    from convscope.callbacks.mixed_precision import MixedPrecision

    dls = DataLoaders.from_data(data, bs=cfg.bs, seed=cfg.seed, device=resolve_device(cfg.device))
    torch.manual_seed(cfg.seed)
    model = simple_cnn(in_channels=dls.in_channels, n_classes=dls.c)
    cbs = [ChannelsLast()] if cfg.channels_last else []
    if cfg.augment:
        cbs.append(BatchAugment(pad=max(1, dls.train.x.shape[-1] // 14)))
    if cfg.precision != "fp32":
        cbs.append(MixedPrecision(cfg.precision))
    if cfg.stats if stats is None else stats:
        cbs.append(ActivationStats(seed=cfg.seed))
    return Learner(dls, model, lr=cfg.lr, cbs=cbs, progress=progress)


def write_metrics_csv(path: Path, values: list[dict]) -> None:
    buf = io.StringIO()
    if values:
        writer = csv.DictWriter(buf, fieldnames=list(values[0]))
        writer.writeheader()
        writer.writerows(values)
    atomic_write_bytes(path, buf.getvalue().encode())


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """The model's state_dict as safetensors, written atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


CHECKPOINT = "checkpoint.safetensors"


def load_config(run_dir: str | Path, **overrides) -> TrainConfig:
    """The TrainConfig a run folder was trained with (for resuming it)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UsageError(f"Cannot resume {str(run_dir)!r}: it has no config.json. Expected a "
                         f"run folder written by `convscope train`.")
    try:
        saved = json.loads(path.read_text())
        return TrainConfig(**{**saved, **overrides, "out": str(run_dir)})
    except (ValueError, TypeError) as e:
        raise UsageError(f"{path}: not a valid run configuration: {e}") from None


def run_training(cfg: TrainConfig, log=print, resume: bool = False) -> TrainResult:
    """Train as `cfg` says and write the run folder; return where, and the final accuracy.

    In a process started by torchrun (several processes), joins the process group, trains
    with DistributedDataParallel, and only rank 0 writes files and prints.

    Args:
        resume: continue from the run folder's checkpoint instead of starting afresh.
    """
    from convscope import distributed

    info = None
    if distributed.launched_by_torchrun():
        info = distributed.setup(resolve_device(cfg.device))
    try:
        return _run(cfg, log if info is None or info.is_main else _silent, resume, info)
    finally:
        if info is not None:
            distributed.teardown()


def _silent(*args, **kwargs) -> None:
    pass


def _run(cfg: TrainConfig, log, resume: bool, info) -> TrainResult:
    from convscope.callbacks import CheckpointCallback, GracefulStop
    from convscope.distributed import Distributed

    main = info is None or info.is_main
    run_dir = Path(cfg.out)
    checkpoint = run_dir / CHECKPOINT
    if resume and not checkpoint.is_file():
        raise UsageError(f"Cannot resume {str(run_dir)!r}: it has no {CHECKPOINT} (the run "
                         f"stopped before its first checkpoint). Start it again without "
                         f"--resume.")
    data = load_data(cfg)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    log(f"data: {data.source}: {len(data.y_train)} train, {len(data.y_valid)} valid images "
        f"of {' x '.join(map(str, data.x_train.shape[1:]))}, {len(data.classes)} classes")
    for bad in data.skipped:
        log(f"skipped: {bad}")
    if info is not None:
        log(f"distributed: {info.world_size} processes of {torch.get_num_threads()} thread(s) "
            f"each, training on its shard of the batches")
    learn = make_learner(data, cfg, progress=main, stats=cfg.stats and main)
    if info is not None:
        learn.add_cb(Distributed(info, sync_bn=cfg.sync_bn))
    if main:
        learn.add_cb(CheckpointCallback(checkpoint, every_batches=cfg.checkpoint_every))
    if info is None:  # several processes would stop at different batches
        learn.add_cb(GracefulStop())
    if resume:
        from convscope.checkpoint import read_checkpoint

        pos = read_checkpoint(checkpoint)[1]["position"]
        if pos["epoch"] >= pos["n_epoch"]:
            log(f"{checkpoint} is from the end of the run ({pos['n_epoch']} epochs): nothing "
                f"left to train; writing the run's outputs again")
        else:
            log(f"resuming from {checkpoint}: epoch {pos['epoch']}, batch {pos['batch']}")
    elif main:
        atomic_write_bytes(run_dir / "config.json", json.dumps(asdict(cfg), indent=2).encode())
    start = time.perf_counter()
    learn.fit_one_cycle(cfg.epochs, cfg.lr, resume=checkpoint if resume else None)
    seconds = time.perf_counter() - start
    stop = getattr(learn, "graceful_stop", None)
    if stop is not None and stop.stopped_at is not None:
        epoch, batch = stop.stopped_at
        raise TrainingInterrupted(
            f"interrupted: stopped at epoch {epoch}, batch {batch} of {cfg.epochs} epochs; "
            f"{run_dir / CHECKPOINT} holds that position. Continue with `convscope train "
            f"--resume {run_dir}`.")
    values = learn.recorder.values
    accuracy = values[-1]["accuracy"] if values else learn.validate()["accuracy"]
    if not main:
        return TrainResult(run_dir, accuracy, seconds, values)
    # imported after training: matplotlib alone takes 0.5-0.8 s, which the first batch waited
    # for when these imports stood at the top
    from convscope import plots
    from convscope.diagnosis import diagnose
    from convscope.report import build_report

    write_metrics_csv(run_dir / "metrics.csv", values)
    mean, std = learn.dls.stats
    save_weights(learn.model, run_dir / "model.safetensors",
                 {"model": "simple_cnn", "in_channels": str(learn.dls.in_channels),
                  "n_classes": str(learn.dls.c), "classes": json.dumps(learn.dls.classes),
                  "input_shape": json.dumps(list(learn.dls.train.x.shape[1:])),
                  "mean": json.dumps(mean.tolist()), "std": json.dumps(std.tolist())})
    learn.recorder.history().save(run_dir / "history.json")
    stats = getattr(learn, "activation_stats", None)
    if stats is not None:
        stats.save(run_dir / "activation_stats.safetensors")
    # drawn after training: importing matplotlib and rendering would delay the first batch
    learn.dls.show_batch(save=run_dir / "show_batch.png")
    if values:
        plots.plot_loss(learn.recorder, save=run_dir / "loss.png")
        plots.plot_sched(learn.recorder, save=run_dir / "sched.png")
    log(f"{held_out_name(cfg)} accuracy: {accuracy:.2%} after {cfg.epochs} "
        f"epoch{'s' if cfg.epochs != 1 else ''} in {seconds:.1f}s of training")
    for finding in diagnose(learn):
        log(f"diagnosis: {finding}")
    report = build_report(run_dir)
    log(f"run folder: {run_dir} (open {report.name})")
    return TrainResult(run_dir, accuracy, seconds, values)
