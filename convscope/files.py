"""Files: written so they are complete or absent, and read without trusting their content.

Every file convscope writes goes through `atomic_write` (temp file in the same folder, fsync,
rename), so a crash never leaves half a file. Every safetensors file it reads goes through
`read_safetensors`, which checks the format named in its metadata and turns any damage into a
ValueError that names the file. Nothing here unpickles.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from convscope.errors import UsageError


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a file through `write(f)` so that it is either complete or absent: temp file in
    the same folder, fsync, rename. The file gets the mode a plain open() would give."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    """`atomic_write` of a bytes payload."""
    atomic_write(path, lambda f: f.write(payload))


def read_safetensors(path: str | Path, fmt: str, what: str) -> tuple[dict, dict[str, str]]:
    """The tensors and metadata of a safetensors file whose metadata names format `fmt`.

    Args:
        what: what the file should be, for messages ("a checkpoint").
    Raises:
        ValueError: missing, truncated, corrupt, or of another format.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"No such file: {str(path)!r} (expected {what}).")
    return read_safetensors_bytes(path.read_bytes(), str(path), fmt, what)


def read_safetensors_bytes(data: bytes, name: str, fmt: str, what: str,
                           unnamed: bool = False) -> tuple[dict, dict[str, str]]:
    """`read_safetensors` of a file's bytes (read here, or received from another process),
    `name` naming it in messages; `unnamed`: a file that names no format is taken too (one
    written before its format was named)."""
    import json

    from safetensors.torch import load

    try:
        size = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + size]).get("__metadata__") or {}
        if meta.get("format") != fmt and not (unnamed and "format" not in meta):
            raise UsageError(f"{name}: not {what} (its metadata names format "
                             f"{meta.get('format')!r}, expected {fmt!r}).")
        return load(data), meta
    except UsageError:
        raise
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise UsageError(f"{name}: cannot be read as {what} (truncated or corrupt?): "
                         f"{e}") from None


def check_format_version(meta: dict[str, str], newest: int, path: str | Path, what: str,
                         default: str) -> int:
    """The format version a safetensors file's metadata names (`default` when it names none),
    or a UsageError when it is not a whole number or is newer than this convscope reads."""
    version = meta.get("version", default)
    if not version.isdigit():
        raise UsageError(f"{path}: {what} metadata is corrupt: format version {version!r}, "
                         f"expected a whole number")
    if int(version) > newest:
        raise UsageError(f"{path}: {what} format version {version} is newer than this "
                         f"convscope reads ({newest}); upgrade convscope")
    return int(version)
