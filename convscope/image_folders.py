"""Image folders: a user's own images, one folder per class, as the same ImageData that MNIST
gives, so DataLoaders, Learner and the CLI work on them unchanged.

Two layouts are understood:
    DIR/train/<class>/*.png and DIR/valid/<class>/*.png (or DIR/test/...)
    DIR/<class>/*.png, split into train and valid by a seeded random fraction.
Every image is decoded once, on every core (convscope/decode.py), converted to one mode for
the whole set (grayscale when every image is, RGB otherwise: palette, RGBA and CMYK included;
16-bit grayscale scaled to 0..255 by its depth) and resized (squashed) to size x size. The
decoded set is cached as a uint8 .npy, a row per file in file order, keyed by the file list,
sizes and modification times and the settings, so later runs do not decode again, and a
changed file gets a new cache. A cache file that cannot be read whole is decoded again and
rewritten; a cache folder that cannot be written is done without.

Memory: the set is held once, as uint8. It is decoded into one buffer and put in split order
(train, then valid) in place; a cached set is read into its place in split order with file
reads. A set larger than half the memory available is not held at all: it is decoded straight
into the cache file and trained on from the memory-mapped file (a split that does not follow
file order is written once more, in split order, beside it)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from convscope.data import GREY_MODES, ImageData, cache_dir
from convscope.decode import decode_into, shared_buffer
from convscope.errors import UsageError
from convscope.files import atomic_write, atomic_write_bytes
from convscope.task_bar import TaskBar

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
VALID_NAMES = ("valid", "val", "test")


def _images_in(folder: Path) -> list[str]:
    """The paths of the image files under `folder`, in the order of their path parts. A
    walk of the directory entries, whose types come with the listing (a stat per file, or a
    Path per file, would double the time to list a large folder). Links to files are
    followed; links to folders inside a class folder are not (as Path.rglob does)."""
    found, todo, nested = [], [os.fspath(folder)], False
    while todo:
        with os.scandir(todo.pop()) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    todo.append(e.path)
                    nested = True
                elif (os.path.splitext(e.name)[1].lower() in EXTENSIONS
                      and e.is_file(follow_symlinks=True)):  # a FIFO or a broken link is not
                    found.append(e.path)
    found.sort(key=(lambda f: f.split(os.sep)) if nested else None)
    return found


def _class_folders(root: Path) -> dict[str, list[str]]:
    return {d.name: _images_in(d) for d in sorted(root.iterdir()) if d.is_dir()
            and not d.name.startswith(".")}


def _refuse_links_back(root: Path, split_roots: list[Path]) -> None:
    """Refuse class folders that are links back into the dataset: to its folder or one above
    it (the class would hold a copy of every image, under a second label, in train and valid
    alike) or into another class's folder (the same images under two labels)."""
    real_root = root.resolve()
    folders = [d for s in split_roots for d in sorted(s.iterdir())
               if d.is_dir() and not d.name.startswith(".")]
    real = {d: d.resolve() for d in folders}
    bad = []
    for link in (d for d in folders if d.is_symlink()):
        target = real[link]
        if real_root == target or real_root.is_relative_to(target):
            bad.append(f"{link} -> {target} (the dataset folder"
                       f"{'' if real_root == target else ' or one above it'})")
            continue
        other = next((d for d in folders if d != link and (
            real[d].is_relative_to(target) or target.is_relative_to(real[d]))), None)
        if other is not None:
            bad.append(f"{link} -> {target} (overlaps the class folder {other})")
    if bad:
        raise UsageError(f"{root}: class folder(s) that link back into the dataset: "
                         f"{'; '.join(bad)}. Expected each class folder to hold its own "
                         f"images; remove the link(s) or point them outside {root}.")


def valid_dir(root: Path) -> Path | None:
    """The folder's own valid split (DIR/valid, val or test beside DIR/train), if it has one.
    Looks at folder names only: no scan of the images."""
    if not (root / "train").is_dir():
        return None
    return next((root / n for n in VALID_NAMES if (root / n).is_dir()), None)


def find_layout(root: Path) -> tuple[dict[str, list[str]], dict[str, list[str]] | None]:
    """The class -> files maps of the train split and, when the folder has one, the valid
    split. Raises ValueError for a folder with no class folders or no images."""
    if not root.is_dir():
        raise UsageError(f"Image folder not found. Received: {str(root)!r}.")
    valid_folder = valid_dir(root)
    _refuse_links_back(root, [root] if valid_folder is None else [root / "train", valid_folder])
    if valid_folder is not None:
        train, valid = _class_folders(root / "train"), _class_folders(valid_folder)
    else:
        train, valid = _class_folders(root), None
    if not train:
        raise UsageError(f"{root} holds no class folders. Expected DIR/<class>/<images> or "
                         f"DIR/train/<class>/... with DIR/valid/<class>/...")
    empty = [c for c, files in train.items() if not files]
    if empty and len(empty) == len(train):
        raise UsageError(f"{root}: no images found (looked for {', '.join(sorted(EXTENSIONS))}"
                         f" in {len(train)} class folders).")
    if empty:
        raise UsageError(f"{root}: class folder(s) with no images: {', '.join(empty)}. Remove "
                         f"them or add images.")
    if valid is not None:
        unknown = sorted(set(valid) - set(train))
        if unknown:
            raise UsageError(f"{valid_folder}: classes {unknown} are not among the training "
                             f"classes {sorted(train)}.")
    return train, valid


def _probe_mode(files: list[str]) -> str:
    """'L' when every image is grayscale, else 'RGB' (reads headers only)."""
    from PIL import Image

    for f in files:
        try:
            with Image.open(f) as im:
                if im.mode not in GREY_MODES:
                    return "RGB"
        except Exception:  # a bad file: reported when it is decoded
            continue
    return "L"


def _cache_key(files: list[str], size: int, mode: str, skip_bad: bool) -> str:
    h = hashlib.sha256()
    # the layout's version: a cache whose rows are laid out otherwise is never read
    h.update(json.dumps({"size": size, "mode": mode, "skip_bad": skip_bad, "v": 3}).encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def available_memory() -> int:
    """Bytes this machine can give a new allocation without swapping (Linux's MemAvailable),
    or its physical memory where that is not known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.0f} MB" if n_bytes >= 2**20 else f"{n_bytes / 1024:,.0f} kB"


class _Decoded:
    """A decoded set: in memory in file order (a row per file, a bad file's row zero), or a
    memory-mapped cache file whose row r holds file `rows[r]`, beginning `offset` bytes into
    `path`."""

    def __init__(self, x: np.ndarray, kept: list[int], bad: list[str], rows: np.ndarray,
                 path: Path | None = None, offset: int = 0) -> None:
        self.x, self.kept, self.bad, self.rows = x, kept, bad, rows
        self.path, self.offset = path, offset
        self.failed: list[tuple[int, str]] = []  # (file index, message) of a fresh decode
        self.seconds = 0.0  # a fresh decode's time
        self.x_path: Path | None = None  # where a fresh decode is to be cached, and its
        self.meta_path: Path | None = None  # list of rows

    @property
    def in_ram(self) -> bool:
        return self.path is None

    def source_rows(self, files: np.ndarray) -> np.ndarray:
        """The rows of `x` that hold the images of `files` (file indices)."""
        row_of = np.full(int(self.rows.max()) + 1, -1, dtype=np.int64)
        row_of[self.rows] = np.arange(len(self.rows))
        return row_of[files]


def decode_all(files: list[str], size: int, mode: str, skip_bad: bool = False,
               cache: Path | None = None, stream: bool = False,
               log: Callable[[str], None] | None = None,
               order: np.ndarray | None = None) -> _Decoded:
    """Decode `files` (a row each, uint8 (C, size, size)), or find them in the cache.

    A cached set is returned memory-mapped (nothing read yet). Otherwise every file is
    decoded on every core, row j holding file order[j] (default: file order), into memory
    (the caller caches it, `cache_later`), or, with `stream`, straight into the cache file,
    returned memory-mapped.
    Raises:
        UsageError: some files are bad and `skip_bad` is False (all are listed).
    """
    shape = (len(files), 1 if mode == "L" else 3, size, size)
    key = _cache_key(files, size, mode, skip_bad)
    x_path = meta_path = None
    if cache is not None:
        x_path, meta_path = cache / f"{key}.npy", cache / f"{key}.json"
        if x_path in _writing:
            _writing.pop(x_path).join()
        hit = _read_cache(x_path, meta_path, shape)
        if hit is not None:
            if log is not None:
                log(f"image cache: read {len(hit.kept):,} decoded images of {size}x{size} from "
                    f"{x_path} ({_mib(x_path.stat().st_size)})")
            return hit
    if stream and cache is None:
        raise UsageError(f"{len(files):,} images of {size}x{size} need {_mib(int(np.prod(shape)))}"
                         f", more than half the memory available ({_mib(available_memory())}); "
                         f"such a set is streamed from its decoded cache, which needs a cache "
                         f"folder. Received: cache=None. Expected a writable cache folder.")
    start = time.monotonic()
    order = np.arange(len(files)) if order is None else order
    in_order = [files[i] for i in order]
    with TaskBar(f"decoding {len(files):,} images", len(files)) as bar:
        if stream:
            decoded = _decode_to_file(in_order, shape, mode, x_path, bar.update)
        else:
            x = shared_buffer(shape)
            decoded = _Decoded(x, [], [], order)
            decoded.failed = decode_into(x, in_order, size, mode, bar.update)
    decoded.rows = order
    decoded.failed = sorted((int(order[j]), message) for j, message in decoded.failed)
    bad = [f"{files[i]}: {message}" for i, message in decoded.failed]
    if bad and not skip_bad:
        if stream:
            x_path.unlink(missing_ok=True)
        shown = "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise UsageError(f"{len(bad)} bad image file(s): {shown}. Fix or remove them, or skip "
                         f"them (--skip-bad).")
    failed_rows = {i for i, _ in decoded.failed}
    decoded.kept = [i for i in range(len(files)) if i not in failed_rows]
    decoded.bad = bad
    if not decoded.kept:
        raise UsageError(f"None of the {len(files)} image files could be read.")
    decoded.seconds = time.monotonic() - start
    decoded.meta_path, decoded.x_path = meta_path, x_path
    if stream:
        _write_meta(decoded, decoded.rows)
    return decoded


def _write_meta(decoded: _Decoded, rows: np.ndarray) -> None:
    atomic_write_bytes(decoded.meta_path, json.dumps(
        {"kept": decoded.kept, "bad": decoded.bad, "rows": rows.tolist()}).encode())


def cache_later(decoded: _Decoded, x: np.ndarray, rows: np.ndarray,
                log: Callable[[str], None] | None) -> threading.Thread | None:
    """Write a freshly decoded set to the cache, `x` (which holds files `rows`, and which
    nothing writes to any more) in a thread of its own, so training starts while it is
    written: the file is complete or absent, as ever (written under a temporary name, then
    renamed), and the process waits for the thread before it exits. Logs the line that says
    where the set is cached, or that it is not."""
    size = x.shape[-1]
    skipped = f" ({len(decoded.bad)} unreadable, left out)" if decoded.bad else ""
    said = (f"image cache: decoded {len(decoded.kept):,} images{skipped} to {size}x{size} in "
            f"{decoded.seconds:.1f} s")
    if decoded.x_path is None:
        if log is not None and decoded.seconds > 1:
            log(said)
        return None
    try:
        decoded.x_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # read-only, or not a folder: the cache only saves a decode
        if log is not None:
            log(f"{said}; not cached ({e.strerror or e})")
        return None
    n_bytes = x.nbytes + 128  # numpy's header for a 4-d uint8 array
    if log is not None:
        log(f"{said}; caching them in {decoded.x_path} ({_mib(n_bytes)})")

    def write() -> None:
        try:
            atomic_write(decoded.x_path, lambda f: np.save(f, x))
            _write_meta(decoded, rows)
        except OSError as e:  # full or read-only: the cache only saves a decode
            if log is not None:
                log(f"image cache: could not write {decoded.x_path} ({e.strerror or e}); the "
                    f"next run decodes again")

    writer = threading.Thread(target=write, name="convscope image cache")
    _writing[decoded.x_path] = writer
    writer.start()
    return writer


# cache files being written by this process's threads: a later read of the same set waits
_writing: dict[Path, threading.Thread] = {}


def wait_for_cache_writes() -> None:
    """Return once every cache file this process is writing is written (or given up)."""
    while _writing:
        _writing.popitem()[1].join()


def _decode_to_file(files: list[str], shape: tuple[int, ...], mode: str, x_path: Path,
                    progress: Callable[[int], None]) -> _Decoded:
    """Decode straight into the cache file (through a temporary name, renamed when whole),
    for a set too large to hold in memory; returned memory-mapped."""
    x_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=x_path.parent, prefix=f".{x_path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        x = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        failed = decode_into(x, files, shape[-1], mode, progress)
        x.flush()
        offset = x.offset
        del x
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, x_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    decoded = _Decoded(np.load(x_path, mmap_mode="c"), [], [], np.arange(shape[0]), x_path,
                       offset)
    decoded.failed = failed
    return decoded


def _read_cache(x_path: Path, meta_path: Path, shape: tuple[int, ...]) -> _Decoded | None:
    """The cached set, memory-mapped, or None when the cache lacks it or holds files that
    cannot be read whole (cut off by a full disk or a killed copy) or that do not fit this
    file list: the caller decodes again and rewrites them."""
    if not (x_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        kept, bad = meta["kept"], meta["bad"]
        rows = np.array(meta["rows"], dtype=np.int64)
        x = np.load(x_path, mmap_mode="c")
        whole = x_path.stat().st_size == x.offset + x.nbytes
    except (OSError, ValueError, KeyError, TypeError, EOFError, OverflowError):
        return None
    if not (whole and isinstance(kept, list) and isinstance(bad, list) and kept
            and x.dtype == np.uint8 and x.shape[1:] == shape[1:] and rows.ndim == 1
            and len(rows) == len(x) and all(isinstance(i, int) for i in kept)):
        return None
    if (((rows < 0) | (rows >= shape[0])).any() or len(np.unique(rows)) != len(rows)
            or min(kept) < 0 or max(kept) >= shape[0]):
        return None
    return _Decoded(x, kept, bad, rows, x_path, x.offset)


def _gather_in_place(x: np.ndarray, source: np.ndarray) -> None:
    """x[:len(source)] = x[source] without a second copy of x: the permutation that `source`
    begins (the other rows follow it in order) applied cycle by cycle, a row of scratch."""
    n = len(x)
    rest = np.setdiff1d(np.arange(n), source, assume_unique=True)
    perm = np.concatenate([source, rest]).tolist()
    if perm == list(range(n)):
        return
    done = bytearray(n)
    for start in range(n):
        if done[start] or perm[start] == start:
            continue
        saved = x[start].copy()
        k = start
        while True:
            done[k] = 1
            src = perm[k]
            if src == start:
                x[k] = saved
                break
            x[k] = x[src]
            k = src


def _positions(decoded: _Decoded, rows: np.ndarray) -> np.ndarray:
    """For each row of the cache file, where it goes among `rows` (file indices), or -1."""
    where = np.full(int(max(decoded.rows.max(), rows.max())) + 1, -1, dtype=np.int64)
    where[rows] = np.arange(len(rows))
    return where[decoded.rows]


def _read_rows(decoded: _Decoded, rows: np.ndarray) -> np.ndarray:
    """The images of files `rows` read from the cache file into memory with plain file
    reads, chunk by chunk, so the file's pages are never mapped into this process beside the
    copy."""
    image = decoded.x.shape[1:]
    row_bytes = int(np.prod(image))
    out = shared_buffer((len(rows), *image))
    to_all = _positions(decoded, rows)
    chunk = max(1, (32 << 20) // row_bytes)
    scratch = np.empty((chunk, *image), dtype=np.uint8)
    with open(decoded.path, "rb") as f:
        for first in range(0, len(decoded.x), chunk):
            n = min(chunk, len(decoded.x) - first)
            to = to_all[first:first + n]
            if (to < 0).all():
                continue
            in_place = to[0] >= 0 and np.array_equal(to, np.arange(to[0], to[0] + n))
            f.seek(decoded.offset + first * row_bytes)
            buf = out[to[0]:to[0] + n] if in_place else scratch[:n]
            if f.readinto(memoryview(buf).cast("B")) != n * row_bytes:
                raise OSError(f"{decoded.path}: cut off while being read")
            if not in_place:
                mine = to >= 0
                out[to[mine]] = scratch[:n][mine]
    return out


def _split_file(decoded: _Decoded, rows: np.ndarray, name: str) -> np.ndarray:
    """The images of files `rows` as a second memory-mapped cache file, for a streamed set
    whose split does not follow the cache's order; written once per split, through a
    temporary name."""
    path = decoded.path.with_name(f"{decoded.path.stem}-{name}.npy")
    image = decoded.x.shape[1:]
    if path.is_file():
        try:
            x = np.load(path, mmap_mode="c")
            if x.shape == (len(rows), *image) and path.stat().st_size == x.offset + x.nbytes:
                return x
        except (OSError, ValueError, EOFError):
            pass
    source = decoded.source_rows(rows)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(rows), *image))
        chunk = max(1, (32 << 20) // int(np.prod(image)))
        for first in range(0, len(rows), chunk):
            out[first:first + chunk] = decoded.x[source[first:first + chunk]]
        out.flush()
        del out
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return np.load(path, mmap_mode="c")


def image_folder(path: str | Path, size: int = 28, valid_pct: float = 0.2, seed: int = 0,
                 skip_bad: bool = False, cache: str | Path | None = "default",
                 in_memory: bool | None = None,
                 log: Callable[[str], None] | None = print) -> ImageData:
    """Load a folder of images, one subfolder per class, as uint8 (N, C, size, size).

    Args:
        path: DIR/train/<class>/... with DIR/valid (or val, test)/<class>/..., or
            DIR/<class>/... to be split.
        size: images are resized (squashed) to size x size.
        valid_pct: the valid share when the folder has no valid split (seeded by `seed`).
        skip_bad: leave out files that cannot be decoded (they are listed in `data.skipped`)
            instead of stopping with the list of them.
        cache: folder for the decoded cache; "default" is cache_dir()/images, None disables.
        in_memory: hold the decoded set in memory (True), or stream it from the memory-mapped
            cache (False); None holds it in memory when it takes at most half the memory
            available.
        log: where the line about the cache (used, or written) goes; None for silence.

    >>> # image_folder("pets/", size=64).x_train.shape -> (N, 3, 64, 64)
    """
    root = Path(path)
    if size < 1:
        raise UsageError(f"size must be >= 1. Received: size={size}.")
    if not 0 < valid_pct < 1:
        raise UsageError(f"valid_pct must be in (0, 1). Received: valid_pct={valid_pct}.")
    train, valid = find_layout(root)
    classes = sorted(train)
    index = {c: i for i, c in enumerate(classes)}

    def flatten(split: dict[str, list[str]]) -> tuple[list[str], list[int]]:
        files = [f for c in sorted(split) for f in split[c]]
        return files, [index[c] for c in sorted(split) for _ in split[c]]

    files_t, labels_t = flatten(train)
    files_v, labels_v = flatten(valid) if valid is not None else ([], [])
    files = files_t + files_v
    mode = _probe_mode(files)
    cache_path = (cache_dir() / "images") if cache == "default" else (
        Path(cache) if cache is not None else None)
    n_bytes = len(files) * (1 if mode == "L" else 3) * size * size
    stream = (n_bytes > available_memory() // 2) if in_memory is None else not in_memory

    def split(kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The file indices of the train and the valid images, in the order they are held."""
        if valid is not None:
            return kept[kept < len(files_t)], kept[kept >= len(files_t)]
        g = torch.Generator().manual_seed(seed)  # one pool: hold out a seeded random share
        perm = torch.randperm(len(kept), generator=g).numpy()
        n_valid = int(round(valid_pct * len(perm)))
        return kept[perm[n_valid:]], kept[perm[:n_valid]]

    # decoded straight into split order, as it comes out when no file is bad
    decoded = decode_all(files, size, mode, skip_bad, cache_path, stream, log,
                         order=np.concatenate(split(np.arange(len(files)))))
    rows_t, rows_v = split(np.array(decoded.kept, dtype=np.int64))
    labels = np.array(labels_t + labels_v, dtype=np.int64)
    if len(rows_t) == 0 or len(rows_v) == 0:
        raise UsageError(f"{root}: after the split, train has {len(rows_t)} and valid "
                         f"{len(rows_v)} images; both need at least one.")
    rows = np.concatenate([rows_t, rows_v])
    split_name = "kept" if valid is not None else f"split-{valid_pct:g}-{seed}"
    if np.array_equal(rows, decoded.rows[:len(rows)]) and (decoded.in_ram or stream):
        x = decoded.x[:len(rows)]
    elif decoded.in_ram:  # bad files left out: the others close up, in their new split
        _gather_in_place(decoded.x, decoded.source_rows(rows))
        x = decoded.x[:len(rows)]
    elif not stream:
        x = _read_rows(decoded, rows)
    else:
        x = _split_file(decoded, rows, split_name)
    if decoded.in_ram:
        cache_later(decoded, x, rows, log)
    with warnings.catch_warnings():  # a copy-on-write map: torch is told it is writable
        warnings.simplefilter("ignore", UserWarning)
        x_all = torch.from_numpy(x)
    y_all = torch.from_numpy(labels[rows])
    nt = len(rows_t)
    source = str(root) if valid is not None else f"{root} (held-out {valid_pct:.0%} of train)"
    data = ImageData(x_all[:nt], y_all[:nt], x_all[nt:], y_all[nt:], classes, source)
    data.skipped = decoded.bad
    return data


def is_image_folder(path: str | Path) -> bool:
    """True when `path` is a folder with subfolders (a candidate image-folder dataset)."""
    p = Path(path)
    return p.is_dir() and any(d.is_dir() and not d.name.startswith(".") for d in p.iterdir())
