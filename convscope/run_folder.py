"""The run folder: the files one training run writes, and the rules that keep it one run's.

A run folder holds one run. `convscope train --out DIR` refuses a folder that already holds
one (`--resume` continues it, `--overwrite` replaces it, which deletes only the run's own
files); `--resume` of a run that is complete changes no file. Every file is written
atomically (files.py), so a kill at any moment leaves each file whole or absent.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from convscope.errors import UsageError

CONFIG = "config.json"
CHECKPOINT = "checkpoint.safetensors"
# what a finished run adds, in the order it writes them (report.html last)
OUTPUTS = ("metrics.csv", "model.safetensors", "history.json", "activation_stats.safetensors",
           "gradient_stats.safetensors", "interpretation.safetensors", "show_batch.png",
           "loss.png", "sched.png", "report.html")
STATS = ("activation_stats.safetensors", "gradient_stats.safetensors")  # unless --no-stats
LR_FIND = "lr_find.png"  # `convscope lr-find --out RUN_DIR/lr_find.png`: shown in the report
RUN_FILES = (CONFIG, CHECKPOINT, *OUTPUTS, LR_FIND)


def run_files(folder: str | Path) -> list[str]:
    """The run files `folder` holds (none when it is missing or not a folder)."""
    folder = Path(folder)
    return [name for name in RUN_FILES if (folder / name).is_file()]


def outputs_complete(folder: str | Path, stats: bool) -> bool:
    """Whether a finished run's outputs are all there (activation statistics if recorded)."""
    folder = Path(folder)
    needed = [n for n in OUTPUTS if stats or n not in STATS]
    return all((folder / n).is_file() for n in needed if n not in ("loss.png", "sched.png"))


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


def prepare(folder: str | Path, overwrite: bool = False, flag: str = "--out") -> bool:
    """Make `folder` ready for a new run: refuse one that holds a run unless `overwrite`
    (then delete that run's files, and only those), create it, and check it can be written.

    Returns:
        whether the folder was created here (so a run that fails before writing anything
        can remove it again).
    """
    folder = Path(folder)
    check_folder(folder, flag)
    held = run_files(folder)
    if held and not overwrite:
        raise UsageError(
            f"{flag}: {str(folder)!r} holds a run already ({', '.join(held[:3])}"
            f"{', ...' if len(held) > 3 else ''}). `convscope train --resume {folder}` "
            f"continues it, --overwrite replaces it; or choose another {flag}")
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
        for stale in folder.glob(".*.tmp"):  # temp files of writes a kill cut short
            if any(stale.name.startswith(f".{n}.") for n in RUN_FILES):
                stale.unlink(missing_ok=True)
    return created


def remove_if_empty(folder: str | Path) -> None:
    """Remove a folder this run created, when nothing was written to it."""
    folder = Path(folder)
    try:
        folder.rmdir()
    except OSError:
        pass
