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
import dataclasses
import io
import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from convscope import defaults, run_folder
from convscope.config import TrainConfig, resolve_device, with_absent
from convscope.data import DataLoaders, ImageData, idx_folder, missing_idx_files, mnist
from convscope.errors import PeerLost, TrainingDivergedError, TrainingInterrupted, UsageError
from convscope.files import atomic_write_bytes
from convscope.learner import Learner
from convscope.models import simple_cnn
from convscope.run_folder import CHECKPOINT, CONFIG

__all__ = ["TrainConfig", "TrainResult", "check_data", "load_config", "load_data",
           "make_learner", "resolve_device", "run_training"]


def held_out_name(cfg: TrainConfig) -> str:
    """What the valid set is, for messages: "test" for MNIST's test set (and an IDX folder's)
    and an image folder's test/ folder, "valid" for a valid/ folder or a held-out share."""
    from convscope.image_folders import valid_dir

    if cfg.valid_pct:
        return "valid"
    if cfg.data is None or not missing_idx_files(cfg.data):
        return "test"
    folder = valid_dir(Path(cfg.data))
    return "test" if folder is not None and folder.name == "test" else "valid"


def check_data(data: str | None) -> str:
    """What kind of dataset `--data` names ("mnist", "idx" or "images"), or a UsageError that
    says what is wrong with it: no such folder, a file, an IDX folder that lacks some of its
    four files (listed, never read as an image folder instead), or neither kind."""
    from convscope.data import MNIST_FILES
    from convscope.image_folders import is_image_folder

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


def load_data(cfg: TrainConfig) -> ImageData:
    """The dataset named by the config, subset or split as asked.

    An image folder without a valid split is split by valid_pct (default 0.2); any other
    dataset holds out valid_pct of its training set only when valid_pct is given."""
    from convscope.image_folders import image_folder, valid_dir

    kind = check_data(cfg.data)
    if kind == "mnist":
        data = mnist()
    elif kind == "idx":
        data = idx_folder(cfg.data)
    else:
        has_valid = valid_dir(Path(cfg.data)) is not None
        data = image_folder(cfg.data, size=cfg.size, valid_pct=cfg.valid_pct or 0.2,
                            seed=cfg.seed, skip_bad=cfg.skip_bad)
        if has_valid and cfg.valid_pct:
            data = data.split(cfg.valid_pct, seed=cfg.seed)
        return data.subset(cfg.subset, seed=cfg.seed) if cfg.subset else data
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


def stats_every(bs: int) -> int:
    """The recipe's statistics callbacks record one batch in this many: one per
    `defaults.STATS_IMAGES` training images, every batch from that batch size up."""
    return max(1, defaults.STATS_IMAGES // bs)


def make_learner(data: ImageData, cfg: TrainConfig, progress: bool = True,
                 stats: bool | None = None) -> Learner:
    """The recipe's Learner: simple_cnn with batchnorm, AdamW, channels_last when asked."""
    from convscope.callbacks import ActivationStats, ChannelsLast, GradientStats, HardExamples
    from convscope.callbacks.augment import BatchAugment
    from convscope.callbacks.mixed_precision import MixedPrecision

    dls = DataLoaders.from_data(data, bs=cfg.bs, seed=cfg.seed, device=resolve_device(cfg.device))
    torch.manual_seed(cfg.seed)
    model = simple_cnn(in_channels=dls.in_channels, n_classes=dls.c, bn=cfg.bn)
    cbs = [ChannelsLast()] if cfg.channels_last else []
    if cfg.hard < 1:
        cbs.append(HardExamples(cfg.hard))
    if cfg.augment:
        cbs.append(BatchAugment(pad=max(1, dls.train.x.shape[-1] // 14)))
    if cfg.precision != "fp32":
        cbs.append(MixedPrecision(cfg.precision))
    if cfg.stats if stats is None else stats:
        every = stats_every(cfg.bs)
        cbs += [ActivationStats(seed=cfg.seed, every=every), GradientStats(every=every)]
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


def load_config(run_dir: str | Path, **overrides) -> TrainConfig:
    """The TrainConfig a run folder was trained with (for resuming it), with `overrides`
    (the device) applied."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise UsageError(f"--resume: {str(run_dir)!r} has no {CONFIG}; expected a run folder "
                         f"written by `convscope train`")
    try:
        saved = with_absent(json.loads(path.read_text()))
        return TrainConfig(**{**saved, **overrides, "out": str(run_dir)})
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None
    except (ValueError, TypeError) as e:
        raise UsageError(f"{path}: not a valid run configuration: {e}") from None


def checkpoint_position(run_dir: str | Path) -> dict | None:
    """The position of the run folder's checkpoint, or None when it has none."""
    from convscope.checkpoint import read_checkpoint

    path = Path(run_dir) / CHECKPOINT
    return read_checkpoint(path)[1]["position"] if path.is_file() else None


def completed(run_dir: str | Path, cfg: TrainConfig) -> str | None:
    """When the run in `run_dir` has trained every epoch and written all its outputs: what
    to tell a `--resume` of it (nothing to train; which command rebuilds the report)."""
    pos = checkpoint_position(run_dir)
    if pos is None or pos["epoch"] < pos["n_epoch"]:
        return None
    if not run_folder.outputs_complete(run_dir, cfg.stats):
        return None
    return (f"{run_dir} is complete ({pos['n_epoch']} epoch{'s' if pos['n_epoch'] != 1 else ''}"
            f" trained, its outputs written): nothing left to train, and no file was changed. "
            f"`convscope report {run_dir}` rebuilds its report.")


def run_training(cfg: TrainConfig, log=print, resume: bool = False,
                 overwrite: bool = False) -> TrainResult:
    """Train as `cfg` says and write the run folder; return where, and the final accuracy.

    In a process started by torchrun (several processes), joins the process group, trains
    with DistributedDataParallel, and only rank 0 writes files and prints.

    Args:
        resume: continue the run in `cfg.out` from its checkpoint (from the start when it
            stopped before its first one); a complete run is left as it is.
        overwrite: a new run may replace the run `cfg.out` holds (its files are deleted
            first); without it such a folder is refused.
    Raises:
        UsageError: `cfg.out` holds a run (and neither resume nor overwrite), or cannot be
            written.
        TrainingInterrupted: Ctrl-C; the message says what was kept and what to run next.
    """
    from convscope import distributed

    info = None
    if distributed.launched_by_torchrun():
        info = distributed.setup(resolve_device(cfg.device))
    try:
        if info is not None:
            # the processes per machine, as launched (torchrun may have started them directly)
            cfg = dataclasses.replace(cfg, nproc=int(os.environ.get("LOCAL_WORLD_SIZE",
                                                                    info.world_size)))
            distributed.check_same_config(asdict(cfg), ignore=("data", "out", "device"))
        result = _run(cfg, log if info is None or info.is_main else _silent, resume,
                      overwrite, info)
    except BaseException as e:
        if info is not None:
            distributed.teardown(ok=False)
            if isinstance(e, RuntimeError) and "peer" in str(e).lower():
                raise PeerLost(f"process {info.rank}: another process of the group stopped "
                               f"({str(e).splitlines()[0][-80:]}); this one stops too") from None
        raise
    if info is not None:
        distributed.teardown()
    return result


def _silent(*args, **kwargs) -> None:
    pass


def _interrupted(phase: str, run_dir: Path, created: bool, resume: bool) -> str:
    """What a Ctrl-C during `phase` kept, and what to run next."""
    if phase == "loading the data":
        if created:
            run_folder.remove_if_empty(run_dir)
        kept = f"{run_dir} is as it was" if resume or not created else "nothing was written"
        return f"interrupted while loading the data: {kept}. Run the same command again."
    pos = checkpoint_position(run_dir)
    if phase == "training":
        if pos is None:
            return (f"interrupted during training, before its first checkpoint. `convscope "
                    f"train --resume {run_dir}` starts it again with its settings.")
        return (f"interrupted during training; {run_dir / CHECKPOINT} holds epoch "
                f"{pos['epoch']}, batch {pos['batch']}. Continue with `convscope train "
                f"--resume {run_dir}`.")
    return (f"interrupted while writing the run's outputs: training had finished and "
            f"{run_dir / CHECKPOINT} holds its end. `convscope train --resume {run_dir}` "
            f"writes them.")


def _run(cfg: TrainConfig, log, resume: bool, overwrite: bool, info) -> TrainResult:
    from convscope.distributed import restart_count, same_everywhere

    main = info is None or info.is_main
    run_dir = Path(cfg.out)
    restart = restart_count() if info is not None else (0, 0)
    if restart[0] > 0:  # a restarted group goes on from the last checkpoint
        resume = True
    if resume:
        done = same_everywhere(completed(run_dir, cfg) if main else None)
        if done is not None:
            log(done)
            return _result_of(run_dir) if main else TrainResult(run_dir, math.nan, 0.0)
    created = main and not resume and run_folder.prepare(run_dir, overwrite)
    phase = ["loading the data"]  # where a Ctrl-C lands, for its message
    try:
        return _train(cfg, log, resume, info, main, run_dir, phase, restart)
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt:
        raise TrainingInterrupted(_interrupted(phase[0], run_dir, created, resume)) from None
    except BaseException:
        if phase[0] == "loading the data" and created:
            run_folder.remove_if_empty(run_dir)
        raise


def _result_of(run_dir: Path) -> TrainResult:
    """The result of a complete run, read from its folder."""
    from convscope.report import load_run

    run = load_run(run_dir)
    accuracy = run.values[-1]["accuracy"] if run.values else float("nan")
    return TrainResult(run_dir, accuracy, 0.0, run.values)


def _train(cfg: TrainConfig, log, resume: bool, info, main: bool, run_dir: Path,
           phase: list[str], restart: tuple[int, int]) -> TrainResult:
    from convscope.callbacks import CheckpointCallback, GracefulStop, ValidPreds
    from convscope.distributed import Distributed, same_everywhere
    from convscope.precision import describe

    checkpoint = run_dir / CHECKPOINT
    data = load_data(cfg)
    phase[0] = "training"
    log(f"data: {data.source}: {len(data.y_train)} train, {len(data.y_valid)} valid images "
        f"of {' x '.join(map(str, data.x_train.shape[1:]))}, {len(data.classes)} classes")
    for bad in data.skipped:
        log(f"skipped: {bad}")
    device = resolve_device(cfg.device)
    log(describe(device, cfg.precision))
    if info is not None:
        log(f"distributed: {info.world_size} processes of {torch.get_num_threads()} thread(s) "
            f"each, training on its shard of the batches")
    learn = make_learner(data, cfg, progress=main, stats=cfg.stats and main)
    hard = getattr(learn, "hard_examples", None)
    if hard is not None and cfg.epochs > 1:
        log(f"hard examples: epochs after the first train on the {hard.n_hard} training images "
            f"({cfg.hard:.0%}) with the highest loss when last seen (--hard 1: on all)")
    if info is not None:
        learn.add_cb(Distributed(info, sync_bn=cfg.sync_bn))
    if main:
        learn.add_cb(CheckpointCallback(checkpoint, every_batches=cfg.checkpoint_every))
        learn.add_cb(ValidPreds())
    if info is None:  # several processes would stop at different batches
        learn.add_cb(GracefulStop())
    pos = same_everywhere(checkpoint_position(run_dir) if resume and main else None)
    if restart[0] > 0:
        where = (f"epoch {pos['epoch']}, batch {pos['batch']}" if pos is not None
                 else "the start (no checkpoint had been written)")
        log(f"restart {restart[0]} of {restart[1]}: resumed from {where}")
    elif resume and pos is None:
        log(f"{run_dir} has no checkpoint yet (it stopped before the first): training it "
            f"from the start with its settings")
    elif pos is not None and pos["epoch"] >= pos["n_epoch"]:
        log(f"{checkpoint} holds the end of training ({pos['n_epoch']} epochs); writing the "
            f"outputs the run had not written yet")
    elif pos is not None:
        log(f"resuming from {checkpoint}: epoch {pos['epoch']}, batch {pos['batch']}")
    if main and (not resume or not (run_dir / CONFIG).is_file()):
        atomic_write_bytes(run_dir / CONFIG,
                           json.dumps(asdict(cfg.resolved()), indent=2).encode())
    start = time.perf_counter()
    try:
        fit = learn.fit_one_cycle if cfg.schedule == "one_cycle" else learn.fit
        fit(cfg.epochs, cfg.lr, resume=checkpoint if pos is not None else None)
    except TrainingDivergedError as e:  # what to run next, for the command line
        raise TrainingDivergedError(
            f"{e} To train again in {run_dir}, add --overwrite (or choose another --out).",
            e.epoch, e.batch, e.lr) from None
    seconds = time.perf_counter() - start
    stop = getattr(learn, "graceful_stop", None)
    if stop is not None and stop.stopped_at is not None:
        epoch, batch = stop.stopped_at
        raise TrainingInterrupted(
            f"interrupted: stopped at epoch {epoch}, batch {batch} of {cfg.epochs} epochs; "
            f"{checkpoint} holds that position. Continue with `convscope train "
            f"--resume {run_dir}`.")
    phase[0] = "writing the outputs"
    values = learn.recorder.values
    accuracy = values[-1]["accuracy"] if values else learn.validate()["accuracy"]
    if not main:
        return TrainResult(run_dir, accuracy, seconds, values)
    from convscope.callbacks.interrupt import finish_before_stopping

    def note() -> None:
        print("convscope: training has finished; writing its outputs and report first (a "
              "few seconds). Ctrl-C again stops at once.", file=sys.stderr, flush=True)

    with finish_before_stopping(note), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a library's warning is not the user's to read
        accuracy = write_outputs(learn, cfg, run_dir, accuracy, seconds, log)
    return TrainResult(run_dir, accuracy, seconds, values)


def write_outputs(learn: Learner, cfg: TrainConfig, run_dir: Path, accuracy: float,
                  seconds: float, log) -> float:
    """Everything a finished run writes besides its checkpoint, report.html last; returns the
    accuracy it reports (with test-time augmentation when the run has it)."""
    # imported after training: matplotlib alone takes 0.5-0.8 s, which the first batch waited
    # for when these imports stood at the top
    from convscope import metrics, plots
    from convscope.diagnosis import diagnose
    from convscope.interpretation import Interpretation
    from convscope.report import build_report
    from convscope.tta import VIEWS, unsure

    learn.recorder.meta["held_out"] = held_out_name(cfg)
    kept = getattr(learn, "valid_preds", None)
    # the last validation saw the final model: its outputs serve; else (outputs written without
    # training, a resumed finished run, or a shard's share) a pass is made
    plain = kept.preds if kept is not None and kept.complete() else None
    tta_line = ""
    if cfg.tta:
        start = time.perf_counter()
        if plain is None:
            plain, _ = learn.get_preds()
        looked = len(unsure(plain.float().softmax(dim=1), defaults.TTA_UNSURE))
        probs, targs = learn.tta(plain=plain, unsure_below=defaults.TTA_UNSURE)
        tta_seconds = time.perf_counter() - start
        without, accuracy = accuracy, float(metrics.accuracy(probs, targs))
        learn.recorder.meta["tta"] = {
            "accuracy": accuracy, "without": without, "views": VIEWS,
            "unsure_below": defaults.TTA_UNSURE, "looked_at": looked,
            "seconds": round(tta_seconds, 3)}
        tta_line = (f", with test-time augmentation ({without:.2%} without it; the {looked} "
                    f"images it was least sure of looked at again in {tta_seconds:.2f}s)")
    values = learn.recorder.values
    write_metrics_csv(run_dir / "metrics.csv", values)
    mean, std = learn.dls.stats
    save_weights(learn.model, run_dir / "model.safetensors",
                 {"model": "simple_cnn", "bn": json.dumps(cfg.bn),
                  "in_channels": str(learn.dls.in_channels),
                  "n_classes": str(learn.dls.c), "classes": json.dumps(learn.dls.classes),
                  "input_shape": json.dumps(list(learn.dls.train.x.shape[1:])),
                  "mean": json.dumps(mean.tolist()), "std": json.dumps(std.tolist())})
    learn.recorder.history().save(run_dir / "history.json")
    stats = getattr(learn, "activation_stats", None)
    if stats is not None:
        stats.save(run_dir / "activation_stats.safetensors")
    gradients = getattr(learn, "gradient_stats", None)
    if gradients is not None:
        gradients.save(run_dir / "gradient_stats.safetensors")
    if cfg.tta:  # what the reported accuracy counts: the averaged probabilities
        it = Interpretation.from_preds(probs.log(), targs, learn.dls.classes,
                                       images=learn.dls.valid.x)
    elif plain is not None:
        it = Interpretation.from_preds(plain, kept.targs, learn.dls.classes,
                                       images=learn.dls.valid.x)
    else:
        it = Interpretation.from_learner(learn)
    it.save(run_dir / "interpretation.safetensors")
    augment = getattr(learn, "batch_augment", None)
    learn.dls.show_batch(save=run_dir / "show_batch.png",
                         tfm=augment.apply if augment is not None else None)
    if values:
        plots.plot_loss(learn.recorder, save=run_dir / "loss.png")
        plots.plot_sched(learn.recorder, save=run_dir / "sched.png")
    log(f"{held_out_name(cfg)} accuracy: {accuracy:.2%} after {cfg.epochs} "
        f"epoch{'s' if cfg.epochs != 1 else ''} in {seconds:.1f}s of training{tta_line}")
    for finding in diagnose(learn):
        log(f"diagnosis: {finding}")
    report = build_report(run_dir)
    log(f"run folder: {run_dir} (open {report.name})")
    return accuracy
