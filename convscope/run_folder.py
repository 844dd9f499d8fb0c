"""The run folder: the files one training run writes, reading them back, and the rules that
keep a folder one run's.

A run folder holds one run. `convscope train --out DIR` refuses a folder that already holds
one (`--resume` continues it, `--overwrite` replaces it, which deletes only the files a run
wrote, and only in a folder convscope marked as a run's); `--resume` of a run that is complete
changes no file. One process owns a folder while it trains (a lock the system drops when the
process ends, however it ends). Every file is written atomically (files.py), so a kill at any
moment leaves each file whole or absent.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from convscope.errors import UsageError

CONFIG = "config.json"
CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.csv"
MODEL = "model.safetensors"
HISTORY = "history.json"
ACTIVATION_STATS = "activation_stats.safetensors"
GRADIENT_STATS = "gradient_stats.safetensors"
INTERPRETATION = "interpretation.safetensors"
SHOW_BATCH = "show_batch.png"
LOSS_PNG = "loss.png"
SCHED_PNG = "sched.png"
REPORT = "report.html"
EXPLORE = "explore.html"
LR_FIND = "lr_find.png"  # `convscope lr-find --out RUN_DIR/lr_find.png`: shown in the report
TENSORBOARD = "tensorboard"  # a folder of event files, with --tensorboard
MODEL_SHA256 = "model_sha256"  # in config.json, for a model from the user's FILE.py
# what a finished run adds, in the order it writes them (report.html last)
OUTPUTS = (METRICS, MODEL, HISTORY, ACTIVATION_STATS, GRADIENT_STATS, INTERPRETATION,
           SHOW_BATCH, LOSS_PNG, SCHED_PNG, REPORT)
STATS = (ACTIVATION_STATS, GRADIENT_STATS)  # unless --no-stats
RUN_FILES = (CONFIG, CHECKPOINT, *OUTPUTS, LR_FIND, EXPLORE)
REQUIRED = (CONFIG, METRICS, HISTORY)  # what `load_run` needs
# written first into every folder convscope prepares: only a folder holding it is cleared
# by --overwrite, so a folder of someone's own config.json or report.html is never emptied
MARKER = ".convscope-run"


def run_files(folder: str | Path) -> list[str]:
    """The run files `folder` holds (none when it is missing or not a folder)."""
    folder = Path(folder)
    return [name for name in RUN_FILES if (folder / name).is_file()]


def outputs_complete(folder: str | Path, stats: bool) -> bool:
    """Whether a finished run's outputs are all there (activation statistics if recorded)."""
    folder = Path(folder)
    needed = [n for n in OUTPUTS if stats or n not in STATS]
    return all((folder / n).is_file() for n in needed if n not in (LOSS_PNG, SCHED_PNG))


def check_folder(folder: Path, flag: str = "--out") -> None:
    """Refuse a path that cannot be a folder: a file, or a path through a file."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag}: {str(folder)!r} is a file; expected a folder for the run")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{flag}: {str(folder)!r} lies under {str(parent)!r}, which "
                                 f"is a file; choose a folder path")
            break


def check_run_files(folder: Path) -> None:
    """Refuse a folder where a run file's name is taken by something that is not a file (a
    folder called checkpoint.safetensors would fail the first save, after an epoch)."""
    for name in RUN_FILES:
        path = folder / name
        if path.exists() and not path.is_file():
            raise UsageError(f"{str(path)!r} is not a file (a folder?); convscope writes a "
                             f"file of that name there. Move it away or choose another --out")


def quoted(path: str | Path) -> str:
    """A path as it can be pasted into a shell command."""
    import shlex

    return shlex.quote(str(path))


def prepare(folder: str | Path, overwrite: bool = False, flag: str = "--out") -> bool:
    """Make `folder` ready for a new run: refuse one that holds a run unless `overwrite`
    (then delete that run's files, and only those), create it, mark it as a run's, and check
    it can be written.

    Returns:
        whether the folder was created here (so a run that fails before writing anything
        can remove it again).
    """
    folder = Path(folder)
    check_folder(folder, flag)
    check_run_files(folder)
    held = run_files(folder)
    if held and not overwrite:
        raise UsageError(
            f"{flag}: {str(folder)!r} holds a run already ({', '.join(held[:3])}"
            f"{', ...' if len(held) > 3 else ''}). `convscope train --resume {quoted(folder)}` "
            f"continues it, --overwrite replaces it; or choose another {flag}")
    if held and not is_convscope_run(folder):
        raise UsageError(
            f"{flag}: {str(folder)!r} holds {', '.join(held[:3])}"
            f"{', ...' if len(held) > 3 else ''} but convscope did not prepare it (it has no "
            f"{MARKER}), so --overwrite deletes nothing there; choose another {flag}")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".convscope-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"{flag}: cannot write the run folder {str(folder)!r}: "
                         f"{e.strerror or e}") from None
    if held:
        for name in held:
            (folder / name).unlink(missing_ok=True)
        events = folder / TENSORBOARD
        if events.is_dir():  # the event files of the run being replaced, and only those
            for f in events.glob("events.out.tfevents.*"):
                f.unlink()
            try:
                events.rmdir()
            except OSError:  # something of the user's is in there too: it stays
                pass
        for stale in folder.glob(".*.tmp"):  # temp files of writes a kill cut short
            if any(stale.name.startswith(f".{n}.") for n in RUN_FILES):
                stale.unlink(missing_ok=True)
    (folder / MARKER).touch()
    return created


def is_convscope_run(folder: Path) -> bool:
    """Whether convscope prepared `folder`: its marker, or (a run folder written before
    markers) a config.json whose `out` is this very folder, which no one else's file says."""
    if (folder / MARKER).is_file():
        return True
    try:
        out = json.loads((folder / CONFIG).read_text()).get("out")
        return out is not None and Path(out).resolve() == folder.resolve()
    except (OSError, ValueError, AttributeError):
        return False


def remove_if_empty(folder: str | Path) -> None:
    """Remove a folder this run created, when nothing but its marker was written."""
    folder = Path(folder)
    try:
        if {p.name for p in folder.iterdir()} <= {MARKER}:
            (folder / MARKER).unlink(missing_ok=True)
        folder.rmdir()
    except OSError:
        pass


class Lock:
    """The run folder's owner while it trains: a second process that tries to train, resume
    or overwrite the same folder is refused in one line. An advisory lock (flock) on the
    folder itself: no file is left behind, and the system releases it when the holding
    process ends, killed or not."""

    def __init__(self, folder: str | Path, create: bool = False) -> None:
        self.folder = Path(folder)
        self.create = create
        self._fd: int | None = None

    def __enter__(self) -> Lock:
        import fcntl

        if self.create:
            check_folder(self.folder)
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UsageError(f"--out: cannot write the run folder {str(self.folder)!r}: "
                                 f"{e.strerror or e}") from None
        try:
            self._fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise UsageError(f"cannot lock the run folder {str(self.folder)!r}: "
                             f"{e.strerror or e}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            self._fd = None
            raise UsageError(f"{str(self.folder)!r} is in use by another convscope process "
                             f"(it trains or writes that run now); wait for it to end, or "
                             f"choose another --out") from None
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None


def load_config(run_dir: str | Path, **overrides):
    """The TrainConfig a run folder was trained with (for resuming it), with `overrides`
    (the device, the processes) applied."""
    from convscope.config import TrainConfig, with_absent

    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise UsageError(f"--resume: {str(run_dir)!r} has no {CONFIG}; expected a run folder "
                         f"written by `convscope train`")
    try:
        saved = with_absent(json.loads(path.read_text()))
        digest = saved.pop(MODEL_SHA256, None)
        cfg = TrainConfig(**{**saved, **overrides, "out": str(run_dir)})
        check_model_file(cfg.model, digest)
        return cfg
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None
    except (ValueError, TypeError, OSError) as e:
        raise UsageError(f"{path}: not a valid run configuration: {e}") from None


def check_model_file(spec: str, digest: str | None) -> None:
    """Refuse to resume a run whose model comes from a file that changed since it trained:
    the checkpoint's weights were made by the function as it was."""
    from convscope.models import file_sha256

    now = file_sha256(spec) if spec.rpartition(":")[0].endswith(".py") and Path(
        spec.rpartition(":")[0]).is_file() else None
    if digest is not None and now != digest:
        path = spec.rpartition(":")[0]
        what = "is gone" if now is None else "changed since the run was trained"
        raise UsageError(f"--resume: the model file {path!r} {what} (its SHA-256 is not "
                         f"the one config.json records); restore it, or start a new run")


def checkpoint_position(run_dir: str | Path) -> dict | None:
    """The position of the run folder's checkpoint, or None when it has none."""
    from convscope.checkpoint import read_checkpoint

    path = Path(run_dir) / CHECKPOINT
    return read_checkpoint(path)[1]["position"] if path.is_file() else None


def finished_epochs(run_dir: str | Path, stats: bool) -> int | None:
    """The epochs a complete run trained (every epoch done, every output written); None when
    the run in `run_dir` is not complete. A run whose outputs are all written is complete
    even when its checkpoint was removed, so `--resume` never retrains it."""
    pos = checkpoint_position(run_dir)
    if pos is not None and pos["epoch"] < pos["n_epoch"]:
        return None
    if not outputs_complete(run_dir, stats):
        return None
    if pos is not None:
        return pos["n_epoch"]
    try:
        return len(load_run(run_dir).values)
    except UsageError:
        return None


@dataclass
class Run:
    """What a run folder holds, loaded."""

    path: Path
    config: dict
    values: list[dict]
    history: object  # History
    stats: object | None  # ActivationStats
    model_meta: dict
    gradients: object | None = None  # GradientStats
    interpretation: object | None = None  # Interpretation

    @property
    def result(self):
        """The run's result (convscope.result.Result): the accuracy every page shows."""
        from convscope.result import Result

        return Result.of(self.values, self.history.meta)


def read_metrics(path: Path) -> list[dict]:
    """metrics.csv's rows: the epoch as an int, every other column a float (an empty cell:
    nan)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        if None in row or any(v is None for v in row.values()):
            raise ValueError(f"row {len(out) + 1} does not have one value per column")
        out.append({k: (int(v) if k == "epoch" else float(v) if v != "" else math.nan)
                    for k, v in row.items()})
    return out


def load_run(run_dir: str | Path) -> Run:
    """Read a run folder written by `convscope train`.

    Raises:
        UsageError: the folder or one of its required files is missing or unreadable.
    """
    from convscope.callbacks.activation_stats import ActivationStats
    from convscope.callbacks.recorder import History
    from convscope.config import check_values, with_absent

    path = Path(run_dir)
    if not path.is_dir():
        raise UsageError(f"Run folder not found. Received: {str(path)!r}. Expected a folder "
                         f"written by `convscope train`.")
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        raise UsageError(f"{path} is not a complete run folder: it lacks {', '.join(missing)}.")
    try:
        config = with_absent(json.loads((path / CONFIG).read_text()))
        check_values(config)
    except (ValueError, OSError) as e:
        raise UsageError(f"{path / CONFIG}: not a run's settings: {e}") from None
    try:
        values = read_metrics(path / METRICS)
    except (ValueError, OSError) as e:
        raise UsageError(f"{path / METRICS}: cannot be read as a run's metrics: {e}") from None
    history = History.load(path / HISTORY)
    stats = (ActivationStats.load(path / ACTIVATION_STATS)
             if (path / ACTIVATION_STATS).is_file() else None)
    model_meta = {}
    if (path / MODEL).is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path / MODEL), "pt") as f:
                model_meta = f.metadata() or {}
        except Exception as e:  # safetensors' own error type for a damaged header
            raise UsageError(f"{path / MODEL}: cannot be read: {e}") from None
    gradients = interpretation = None
    if (path / GRADIENT_STATS).is_file():
        from convscope.callbacks.gradient_stats import GradientStats

        gradients = GradientStats.load(path / GRADIENT_STATS)
    if (path / INTERPRETATION).is_file():
        from convscope.interpretation import Interpretation

        interpretation = Interpretation.load(path / INTERPRETATION)
    return Run(path, config, values, history, stats, model_meta, gradients, interpretation)
