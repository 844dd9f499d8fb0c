"""Image folders: a user's own images, one folder per class, as the same in-memory ImageData
that MNIST gives, so DataLoaders, Learner and the CLI work on them unchanged.

Two layouts are understood:
    DIR/train/<class>/*.png and DIR/valid/<class>/*.png (or DIR/test/...)
    DIR/<class>/*.png, split into train and valid by a seeded random fraction.
Every image is decoded once, converted to one mode for the whole set (grayscale when every
image is, RGB otherwise: palette, RGBA and CMYK included; 16-bit grayscale scaled to 0..255 by
its depth) and resized (squashed) to size x size. The decoded set is cached as a memory-mapped
uint8 .npy keyed by the file list, sizes and modification times and the settings, so later
epochs and later runs do not decode again, and a changed file gets a new cache. A cache file
that cannot be read whole is decoded again and rewritten; a cache folder that cannot be
written is done without.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from convscope.data import GREY_MODES, ImageData, cache_dir, to_8bit
from convscope.errors import UsageError
from convscope.files import atomic_write, atomic_write_bytes

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
VALID_NAMES = ("valid", "val", "test")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS
                  and p.is_file())


def _class_folders(root: Path) -> dict[str, list[Path]]:
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


def find_layout(root: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]] | None]:
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


def _decode(path: Path, size: int, mode: str) -> np.ndarray | str:
    """The image as uint8 (size, size) or (size, size, 3), or an error message."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = to_8bit(im).convert(mode)  # 16-bit greyscale scaled, not clipped at 255
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except Image.DecompressionBombError as e:
        return f"refused, too many pixels (a decompression bomb?): {e}"
    except UsageError as e:  # a mode with no 8-bit mapping
        return str(e)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"cannot be read as an image: {e}"


def _probe_mode(files: list[Path]) -> str:
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


def _cache_key(files: list[Path], size: int, mode: str, skip_bad: bool) -> str:
    h = hashlib.sha256()
    # v2: 16-bit greyscale is scaled by its depth (v1 clipped it at 255), so v1 sets go
    h.update(json.dumps({"size": size, "mode": mode, "skip_bad": skip_bad, "v": 2}).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def decode_all(files: list[Path], size: int, mode: str, skip_bad: bool = False,
               cache: Path | None = None) -> tuple[np.ndarray, list[int], list[str]]:
    """Decode `files` into one uint8 array (N, C, size, size), through the cache.

    Returns:
        the images, the indices of `files` they came from, and the bad files' messages.
    Raises:
        ValueError: some files are bad and `skip_bad` is False (all are listed).
    """
    key = _cache_key(files, size, mode, skip_bad)
    if cache is not None:
        x_path, meta_path = cache / f"{key}.npy", cache / f"{key}.json"
        hit = _read_cache(x_path, meta_path, (1 if mode == "L" else 3, size, size), len(files))
        if hit is not None:
            return hit
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(lambda f: _decode(f, size, mode), files))
    bad = [f"{f}: {d}" for f, d in zip(files, decoded, strict=True) if isinstance(d, str)]
    if bad and not skip_bad:
        shown = "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise UsageError(f"{len(bad)} bad image file(s): {shown}. Fix or remove them, or skip "
                         f"them (--skip-bad).")
    kept = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
    if not kept:
        raise UsageError(f"None of the {len(files)} image files could be read.")
    arrays = [decoded[i] for i in kept]
    x = np.stack(arrays)  # (N, H, W) or (N, H, W, 3)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # (N, C, H, W)
    x = np.ascontiguousarray(x)
    if cache is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            atomic_write(x_path, lambda f: np.save(f, x))
            atomic_write_bytes(meta_path, json.dumps({"kept": kept, "bad": bad}).encode())
        except OSError:  # read-only, full, or not a folder: the cache only saves a decode
            return x, kept, bad
        x = np.load(x_path, mmap_mode="r")
    return x, kept, bad


def _read_cache(x_path: Path, meta_path: Path, image_shape: tuple[int, int, int],
                n_files: int) -> tuple[np.ndarray, list[int], list[str]] | None:
    """The cached images, kept indices and messages of `decode_all`, or None when the cache
    lacks them or holds files that cannot be read whole (cut off by a full disk or a killed
    copy) or that do not fit this file list: the caller decodes again and rewrites them."""
    if not (x_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        kept, bad = meta["kept"], meta["bad"]
        x = np.load(x_path, mmap_mode="r")
        whole = x_path.stat().st_size == x.offset + x.nbytes
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None
    if (whole and isinstance(kept, list) and isinstance(bad, list) and x.dtype == np.uint8
            and x.shape == (len(kept), *image_shape)
            and all(isinstance(i, int) and 0 <= i < n_files for i in kept)):
        return x, kept, bad
    return None


def image_folder(path: str | Path, size: int = 28, valid_pct: float = 0.2, seed: int = 0,
                 skip_bad: bool = False, cache: str | Path | None = "default") -> ImageData:
    """Load a folder of images, one subfolder per class, as uint8 (N, C, size, size).

    Args:
        path: DIR/train/<class>/... with DIR/valid (or val, test)/<class>/..., or
            DIR/<class>/... to be split.
        size: images are resized (squashed) to size x size.
        valid_pct: the valid share when the folder has no valid split (seeded by `seed`).
        skip_bad: leave out files that cannot be decoded (they are listed in `data.skipped`)
            instead of stopping with the list of them.
        cache: folder for the decoded cache; "default" is cache_dir()/images, None disables.

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

    def flatten(split: dict[str, list[Path]]) -> tuple[list[Path], list[int]]:
        pairs = [(f, index[c]) for c in sorted(split) for f in split[c]]
        return [f for f, _ in pairs], [y for _, y in pairs]

    files_t, labels_t = flatten(train)
    files_v, labels_v = flatten(valid) if valid is not None else ([], [])
    mode = _probe_mode(files_t + files_v)
    cache_path = (cache_dir() / "images") if cache == "default" else (
        Path(cache) if cache is not None else None)
    x, kept, bad = decode_all(files_t + files_v, size, mode, skip_bad, cache_path)
    labels = np.array(labels_t + labels_v, dtype=np.int64)[kept]
    is_train = np.array([i < len(files_t) for i in kept])
    x_all = torch.from_numpy(np.array(x))  # copy out of the memory map into RAM
    y_all = torch.from_numpy(labels)
    if valid is not None:
        t, v = torch.from_numpy(is_train), torch.from_numpy(~is_train)
        data = ImageData(x_all[t], y_all[t], x_all[v], y_all[v], classes, str(root))
    else:  # one pool of images: hold out a seeded random share as the valid set
        data = ImageData(x_all, y_all, x_all[:0], y_all[:0], classes, str(root))
        data = data.split(valid_pct, seed=seed)
    if len(data.y_train) == 0 or len(data.y_valid) == 0:
        raise UsageError(f"{root}: after the split, train has {len(data.y_train)} and valid "
                         f"{len(data.y_valid)} images; both need at least one.")
    data.skipped = bad
    return data


def is_image_folder(path: str | Path) -> bool:
    """True when `path` is a folder with subfolders (a candidate image-folder dataset)."""
    p = Path(path)
    return p.is_dir() and any(d.is_dir() and not d.name.startswith(".") for d in p.iterdir())
