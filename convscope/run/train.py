"""A training run, start to end: a TrainConfig in, a trained model and a run folder out.

`run_training` is what `convscope train` calls, and what a script calls too. In order:
1. join the process group when torchrun started this process (several processes);
2. a resume of a complete run ends here, changing nothing;
3. prepare the run folder (run_folder.py) and lock it for this process;
4. load the data (run/data.py) and build the learner (run/learner.py);
5. fit, checkpointing as it goes (Ctrl-C stops between two batches, with a checkpoint);
6. write the outputs (run/outputs.py): the result, files, figures and report.
Only the first process writes files and prints.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from convscope import distributed, run_folder
from convscope.callbacks import CheckpointCallback, GracefulStop, ProgressCallback, ValidPreds
from convscope.config import TrainConfig, resolve_device
from convscope.distributed import Distributed, same_everywhere
from convscope.errors import (
    PeerLost,
    TrainingDivergedError,
    TrainingInterrupted,
    UsageError,
    WriteFailed,
)
from convscope.files import atomic_write_bytes
from convscope.models import file_sha256
from convscope.precision import describe
from convscope.recipes import RECIPES
from convscope.run.data import held_out_name, load_data, load_data_per_machine
from convscope.run.learner import make_learner
from convscope.run_folder import CHECKPOINT, CONFIG, quoted
from convscope.signals import finish_before_stopping


@dataclass
class TrainResult:
    run_dir: Path
    accuracy: float  # the run's result (convscope.result)
    train_seconds: float
    values: list[dict] = field(default_factory=list)


def run_training(cfg: TrainConfig, log=print, resume: bool = False,
                 overwrite: bool = False, indent: str = "") -> TrainResult:
    """Train as `cfg` says and write the run folder; return where, and the run's result.

    In a process started by torchrun (several processes), joins the process group, trains
    with DistributedDataParallel, and only rank 0 writes files and prints.

    Args:
        resume: continue the run in `cfg.out` from its checkpoint (from the start when it
            stopped before its first one); a complete run is left as it is.
        overwrite: a new run may replace the run `cfg.out` holds (its files are deleted
            first); without it such a folder is refused.
        indent: starts every line the run prints, its log and its epoch table alike, for a
            run shown under a heading of its caller's.
    Raises:
        UsageError: `cfg.out` holds a run (and neither resume nor overwrite), is in use by
            another process, or cannot be written.
        TrainingInterrupted: Ctrl-C; the message says what was kept and what to run next.
    """
    info = None
    if distributed.launched_by_torchrun():
        info = distributed.setup(resolve_device(cfg.device))
    try:
        if info is not None:
            # the processes per machine, as launched (torchrun may have started them directly)
            cfg = dataclasses.replace(cfg, nproc=int(os.environ.get("LOCAL_WORLD_SIZE",
                                                                    info.world_size)))
            distributed.check_same_config(asdict(cfg), ignore=("data", "out", "device"))
        if indent:
            log = _indented(log, indent)
        result = _Job(cfg, log if info is None or info.is_main else _silent, resume,
                      overwrite, info, indent).run()
    except BaseException as e:
        if info is not None:
            distributed.teardown(ok=False)
            if isinstance(e, RuntimeError) and "peer" in str(e).lower():
                raise PeerLost(peer_lost(info.rank, e)) from None
        raise
    if info is not None:
        distributed.teardown()
    return result


def peer_lost(rank: int, error: BaseException) -> str:
    """What a process says when another of its group stopped: torch's own first line, whole
    up to a line's length (its start says what happened), then cut with an ellipsis."""
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    said = first if len(first) <= 160 else first[:157] + "..."
    return f"process {rank}: another process of the group stopped ({said}); this one stops too"


def _silent(*args, **kwargs) -> None:
    pass


def _indented(log, indent: str):
    return lambda *a, **k: log(indent + " ".join(str(x) for x in a))


def completed_message(run_dir: Path, epochs: int) -> str:
    """What a `--resume` of a complete run says."""
    return (f"{run_dir} is complete ({epochs} epoch{'s' if epochs != 1 else ''} trained, its "
            f"outputs written): nothing left to train, and no file was changed. "
            f"`convscope report {quoted(run_dir)}` rebuilds its report.")


def check_batches(n_train: int, bs: int, world_size: int) -> None:
    """Refuse more processes than an epoch has batches: some would train on nothing."""
    batches = math.ceil(n_train / bs)
    if world_size > batches:
        raise UsageError(f"--nproc: {world_size} processes but an epoch of {n_train:,} images "
                         f"at batch size {bs} has {batches} batch{'es' if batches != 1 else ''};"
                         f" expected at most {batches} processes (or a smaller --bs)")


class _Job:
    """One call of run_training in one process: its steps, in the order they run. `phase`
    says where a Ctrl-C landed, for its message."""

    def __init__(self, cfg: TrainConfig, log, resume: bool, overwrite: bool, info,
                 indent: str = "") -> None:
        self.cfg, self.log, self.info, self.indent = cfg, log, info, indent
        self.main = info is None or info.is_main
        self.run_dir = Path(cfg.out)
        self.checkpoint = self.run_dir / CHECKPOINT
        self.restart = distributed.restart_count() if info is not None else (0, 0)
        # a restarted group goes on from the last checkpoint
        self.resume = resume or self.restart[0] > 0
        self.overwrite = overwrite
        self.phase = "loading the data"
        self.created = False

    def run(self) -> TrainResult:
        if self.resume:
            epochs = same_everywhere(run_folder.finished_epochs(self.run_dir, self.cfg.stats)
                                     if self.main else None)
            if epochs is not None:
                self.log(completed_message(self.run_dir, epochs))
                return self._complete_result()
        if not self.main:
            return self._train()
        self.created = not self.resume and not self.run_dir.exists()
        try:
            # the lock first: a second process must not clear or write the folder meanwhile
            with run_folder.Lock(self.run_dir, create=not self.resume):
                if not self.resume:
                    run_folder.prepare(self.run_dir, self.overwrite)
                return self._train()
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt:
            raise TrainingInterrupted(self._interrupted()) from None
        except OSError as e:
            if e.errno not in _WRITE_ERRORS or isinstance(e, WriteFailed):
                raise
            raise WriteFailed(self._write_failed(e)) from None
        except BaseException:
            if self.phase == "loading the data" and self.created:
                run_folder.remove_if_empty(self.run_dir)
            raise

    def _complete_result(self) -> TrainResult:
        if not self.main:
            return TrainResult(self.run_dir, math.nan, 0.0)
        run = run_folder.load_run(self.run_dir)
        return TrainResult(self.run_dir, run.result.accuracy, 0.0, run.values)

    def _train(self) -> TrainResult:
        cfg, log = self.cfg, self.log
        if self.info is None:
            data = load_data(cfg, log=log)
        else:
            data = load_data_per_machine(cfg, self.info.local_rank, log if self.main else None)
        self.phase = "training"
        recipe = RECIPES[cfg.recipe]
        log(f"recipe: {cfg.recipe}, {recipe.summary}" + _overrides(cfg))
        log(f"data: {data.source}: {len(data.y_train)} train, {len(data.y_valid)} "
            f"{held_out_name(cfg)} images of {' x '.join(map(str, data.x_train.shape[1:]))}, "
            f"{len(data.classes)} classes")
        for bad in data.skipped:
            log(f"skipped: {bad}")
        log(describe(resolve_device(cfg.device), cfg.precision))
        if self.info is not None:
            log(f"distributed: {self.info.world_size} processes of {torch.get_num_threads()} "
                f"thread(s) each, training on its shard of the batches")
        learn = self._learner(data)
        if self.info is not None:
            check_batches(len(data.y_train), cfg.bs, self.info.world_size)
        pos = self._position()
        if self.main and (not self.resume or not (self.run_dir / CONFIG).is_file()):
            record = asdict(cfg.resolved())
            digest = file_sha256(record["model"])
            if digest is not None:  # so --resume can refuse a model file that changed since
                record[run_folder.MODEL_SHA256] = digest
            atomic_write_bytes(self.run_dir / CONFIG, json.dumps(record, indent=2).encode())
        seconds = self._fit(learn, pos)
        self.phase = "writing the outputs"
        if not self.main:
            values = learn.recorder.values
            return TrainResult(self.run_dir, values[-1]["accuracy"] if values else math.nan,
                               seconds, values)
        return self._write(learn, seconds)

    def _learner(self, data):
        learn = make_learner(data, self.cfg, progress=self.main,
                             stats=self.cfg.stats and self.main)
        if self.main and self.indent:
            learn.add_cb(ProgressCallback(indent=self.indent))
        if self.info is not None:
            learn.add_cb(Distributed(self.info, sync_bn=self.cfg.sync_bn))
        if self.main:
            learn.add_cb(CheckpointCallback(self.checkpoint,
                                            every_batches=self.cfg.checkpoint_every))
            learn.add_cb(ValidPreds())
            if self.cfg.tensorboard:  # one writer, the first process's: one set of curves
                from convscope.callbacks.tensorboard import TensorBoardCallback

                learn.add_cb(TensorBoardCallback(self.run_dir / run_folder.TENSORBOARD))
        if self.info is None:  # several processes would stop at different batches
            learn.add_cb(GracefulStop())
        return learn

    def _position(self) -> dict | None:
        """Where training starts: the checkpoint's position when resuming; said in a line."""
        pos = same_everywhere(run_folder.checkpoint_position(self.run_dir)
                              if self.resume and self.main else None)
        if self.restart[0] > 0:
            where = (f"epoch {pos['epoch']}, batch {pos['batch']}" if pos is not None
                     else "the start (no checkpoint had been written)")
            self.log(f"restart {self.restart[0]} of {self.restart[1]}: resumed from {where}")
        elif self.resume and pos is None:
            self.log(f"{self.run_dir} has no checkpoint yet (it stopped before the first): "
                     f"training it from the start with its settings")
        elif pos is not None and pos["epoch"] >= pos["n_epoch"]:
            self.log(f"{self.checkpoint} holds the end of training ({pos['n_epoch']} epochs); "
                     f"writing the outputs the run had not written yet")
        elif pos is not None:
            self.log(f"resuming from {self.checkpoint}: epoch {pos['epoch']}, batch "
                     f"{pos['batch']}")
        return pos

    def _fit(self, learn, pos: dict | None) -> float:
        cfg = self.cfg
        start = time.perf_counter()
        try:
            fit = learn.fit_one_cycle if cfg.schedule == "one_cycle" else learn.fit
            fit(cfg.epochs, cfg.lr, resume=self.checkpoint if pos is not None else None)
        except TrainingDivergedError as e:  # what to run next, for the command line
            raise TrainingDivergedError(
                f"{e} To train again in {self.run_dir}, add --overwrite (or choose another "
                f"--out).", e.epoch, e.batch, e.lr) from None
        stop = getattr(learn, "graceful_stop", None)
        if stop is not None and stop.stopped_at is not None:
            epoch, batch = stop.stopped_at
            raise TrainingInterrupted(
                f"interrupted: stopped at epoch {epoch}, batch {batch} of {cfg.epochs} epochs; "
                f"{self.checkpoint} holds that position. Continue with `convscope train "
                f"--resume {quoted(self.run_dir)}`.")
        return time.perf_counter() - start

    def _write(self, learn, seconds: float) -> TrainResult:
        def note() -> None:
            print("convscope: training has finished; writing its outputs and report first (a "
                  "few seconds). Ctrl-C again stops at once.", file=sys.stderr, flush=True)

        with finish_before_stopping(note), warnings.catch_warnings():
            # matplotlib loads after training, and a Ctrl-C must not cut its import short
            from convscope.run.outputs import write_outputs

            warnings.simplefilter("ignore")  # a library's warning is not the user's to read
            result = write_outputs(learn, self.cfg, self.run_dir, held_out_name(self.cfg),
                                   seconds, self.log)
        return TrainResult(self.run_dir, result.accuracy, seconds, learn.recorder.values)

    def _write_failed(self, e: OSError) -> str:
        """What a failed write (a full disk, a read-only folder) kept, and what to run next."""
        pos = run_folder.checkpoint_position(self.run_dir)
        kept = ("no checkpoint had been written" if pos is None else
                f"{self.checkpoint} holds epoch {pos['epoch']}, batch {pos['batch']}")
        return (f"could not write {e.filename or self.run_dir}: {e.strerror}. Every file "
                f"written before is whole (writes are atomic); {kept}. Free space or make the "
                f"folder writable, then run `convscope train --resume "
                f"{quoted(self.run_dir)}`.")

    def _interrupted(self) -> str:
        """What a Ctrl-C during the current phase kept, and what to run next."""
        run_dir, resume_cmd = self.run_dir, f"`convscope train --resume {quoted(self.run_dir)}`"
        if self.phase == "loading the data":
            if self.created:
                run_folder.remove_if_empty(run_dir)
            kept = (f"{run_dir} is as it was" if self.resume or not self.created
                    else "nothing was written")
            return f"interrupted while loading the data: {kept}. Run the same command again."
        pos = run_folder.checkpoint_position(run_dir)
        if self.phase == "training":
            if pos is None:
                return (f"interrupted during training, before its first checkpoint. "
                        f"{resume_cmd} starts it again with its settings.")
            return (f"interrupted during training; {self.checkpoint} holds epoch "
                    f"{pos['epoch']}, batch {pos['batch']}. Continue with {resume_cmd}.")
        return (f"interrupted while writing the run's outputs: training had finished and "
                f"{self.checkpoint} holds its end. {resume_cmd} writes them.")


# a write that failed for want of room or permission, not for a bug
_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _overrides(cfg: TrainConfig) -> str:
    """', with lr 0.05 (the recipe's: 0.1)' for each recipe setting the config changed."""
    from convscope.config import describe
    from convscope.recipes import overridden

    changed = overridden(asdict(cfg))
    return "".join(f"; {describe(k, getattr(cfg, k))[0]} {describe(k, getattr(cfg, k))[1]} "
                   f"(the recipe's: {describe(k, v)[1]})" for k, v in changed.items())
