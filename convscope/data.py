"""Data: the IDX file format, MNIST, and DataLoaders that live in memory.

MNIST ships as four IDX files (LeCun's format: a magic number, the dims, then raw big-endian
values). `read_idx` reads one, checking everything a damaged or foreign file can get wrong
before it allocates. `mnist()` finds the four files, `DataLoaders.from_data` keeps the whole
set as one uint8 tensor (N, C, H, W) on the target device and cuts batches by indexing it,
which is what makes an epoch cheap: no worker processes, no per-item Python, one float
conversion per batch.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from convscope.errors import MissingDataError, UsageError
from convscope.files import atomic_write_bytes

# dtype code (third byte of the magic number) -> (numpy big-endian dtype, name)
IDX_DTYPES = {
    0x08: (np.dtype(">u1"), "uint8"),
    0x09: (np.dtype(">i1"), "int8"),
    0x0B: (np.dtype(">i2"), "int16"),
    0x0C: (np.dtype(">i4"), "int32"),
    0x0D: (np.dtype(">f4"), "float32"),
    0x0E: (np.dtype(">f8"), "float64"),
}

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "valid_images": "t10k-images-idx3-ubyte",
    "valid_labels": "t10k-labels-idx1-ubyte",
}
# MD5 of the decompressed bytes, as published with the dataset.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
EMBEDDED_MNIST = Path(__file__).parent / "datasets" / "mnist"


def _open_idx(path: Path) -> tuple[object, int]:
    """Open an IDX file, raw or gzipped; return the stream and the size of its content."""
    if path.suffix == ".gz":
        # gzip's trailer holds the uncompressed size mod 2**32: exact for any IDX file that
        # fits in memory, and read without decompressing anything.
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < 18:
                raise UsageError(f"{path}: truncated or not a gzip file: {f.tell()} bytes, "
                                 f"a gzip file holds at least 18.")
            f.seek(-4, os.SEEK_END)
            (size,) = struct.unpack("<I", f.read(4))
        return gzip.open(path, "rb"), size
    return open(path, "rb"), path.stat().st_size


def _gz_content_size(path: Path, cap: int) -> tuple[int, bool]:
    """How many bytes the gzip file `path` decompresses to, counting no further than `cap`,
    and whether its stream ends properly (False: the file is cut off). Decompresses in
    chunks it throws away, so a file that claims more than memory holds costs time only."""
    n, d, data = 0, zlib.decompressobj(wbits=31), b""  # 31: a gzip header and trailer
    with open(path, "rb") as f:
        while n < cap:
            if not data:
                data = f.read(1 << 16)
                if not data:
                    return n, d.eof
            if d.eof:  # one member ended and bytes follow: the next member, or zero padding
                if not data.strip(b"\0"):
                    data = b""
                    continue
                d = zlib.decompressobj(wbits=31)
            n += len(d.decompress(data, 1 << 20))
            data = d.unused_data if d.eof else d.unconsumed_tail
    return n, True


def read_idx(path: str | Path, md5: str | None = None) -> np.ndarray:
    """Read one IDX file (raw or .gz) into a numpy array of its native dtype.

    The header is checked against the file before anything is allocated: a header whose
    dims do not match the data size is refused, so a corrupt file cannot ask for terabytes.

    Args:
        path: the file.
        md5: expected MD5 of the decompressed bytes, or None to skip the check.
    Returns:
        an array of shape given by the header, e.g. (60000, 28, 28) uint8 for MNIST images.
    Raises:
        ValueError: naming the file and what is wrong with it.

    >>> read_idx(EMBEDDED_MNIST / "t10k-labels-idx1-ubyte.gz").shape
    (10000,)
    """
    path = Path(path)
    try:
        stream, size = _open_idx(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file.") from None
    digest = hashlib.md5() if md5 else None
    try:
        with stream as f:  # type: ignore[attr-defined]
            head = f.read(4)
            if len(head) < 4:
                raise UsageError(f"{path}: truncated: {len(head)} bytes, an IDX header needs 4.")
            if head[0] != 0 or head[1] != 0 or head[2] not in IDX_DTYPES:
                raise UsageError(
                    f"{path}: wrong magic number {head.hex()}: an IDX file starts with two zero "
                    f"bytes, a dtype code in {[hex(c) for c in IDX_DTYPES]} and the number of dims."
                )
            dtype, _ = IDX_DTYPES[head[2]]
            ndim = head[3]
            if ndim == 0:
                raise UsageError(f"{path}: header says 0 dims; expected at least 1.")
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise UsageError(f"{path}: truncated in the header: {ndim} dims need "
                                 f"{4 * ndim} bytes, found {len(raw_dims)}.")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            n_bytes = math.prod(dims) * dtype.itemsize
            header = 4 + 4 * ndim
            complete = True
            if header + n_bytes != size and path.suffix == ".gz":
                # the trailer's size is a hint: a cut-off file ends in compressed bytes, and
                # a file of several gzip members holds the last one's size only. Count.
                size, complete = _gz_content_size(path, header + n_bytes + 1)
            if not complete:
                raise UsageError(
                    f"{path}: truncated: the gzip stream is cut off after "
                    f"{max(0, size - header)} bytes of data; the header's dims {dims} of "
                    f"{dtype.name} need {n_bytes}, then the gzip trailer."
                )
            if header + n_bytes != size:
                kind = "truncated" if header + n_bytes > size else "has trailing bytes"
                raise UsageError(
                    f"{path}: {kind}: the header's dims {dims} of {dtype.name} need "
                    f"{n_bytes} bytes of data, the file holds {size - header}."
                )
            data = f.read(n_bytes)
            if len(data) != n_bytes:  # the gzip trailer can lie, the stream cannot
                raise UsageError(f"{path}: truncated: expected {n_bytes} bytes of data, "
                                 f"read {len(data)}.")
            if f.read(1):  # reading on to the end also checks a gzip stream's CRC
                raise UsageError(f"{path}: has trailing bytes: the header's dims {dims} of "
                                 f"{dtype.name} need {n_bytes} bytes of data, the file holds "
                                 f"more.")
            if digest is not None:
                digest.update(head + raw_dims + data)
    except EOFError:  # gzip's word for a stream that stops before its end
        raise UsageError(f"{path}: truncated: the gzip stream is cut off before its end; "
                         f"expected a whole IDX file (raw or gzipped).") from None
    except (OSError, gzip.BadGzipFile, zlib.error) as e:
        raise UsageError(f"{path}: cannot be read as IDX: {e}") from None
    if digest is not None and digest.hexdigest() != md5:
        raise UsageError(f"{path}: checksum mismatch: expected MD5 {md5}, "
                         f"got {digest.hexdigest()}. The file is damaged or not the original.")
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


@dataclass
class ImageData:
    """A labelled image set split in two, as uint8 images (N, C, H, W) and int64 labels (N,)."""

    x_train: Tensor
    y_train: Tensor
    x_valid: Tensor
    y_valid: Tensor
    classes: list[str]
    source: str
    skipped: list[str] = field(default_factory=list)  # files left out as unreadable

    def __repr__(self) -> str:
        shape = " x ".join(map(str, self.x_train.shape[1:]))
        names = ", ".join(self.classes[:10]) + (", ..." if len(self.classes) > 10 else "")
        skipped = f", {len(self.skipped)} unreadable files left out" if self.skipped else ""
        return (f"ImageData: {len(self.y_train)} train and {len(self.y_valid)} valid images of "
                f"{shape} ({self.x_train.dtype}), {len(self.classes)} classes ({names}), from "
                f"{self.source}{skipped}")

    def subset(self, n_train: int, n_valid: int | None = None, seed: int = 0) -> ImageData:
        """A random subset of each split (the same for the same seed), e.g. for quick tests."""
        g = torch.Generator().manual_seed(seed)
        it = torch.randperm(len(self.y_train), generator=g)[:n_train]
        iv = torch.randperm(len(self.y_valid), generator=g)[: n_valid or len(self.y_valid)]
        some = f"a random {len(it):,} of its {len(self.y_train):,} training images"
        if len(iv) < len(self.y_valid):
            some += f" and {len(iv):,} of its {len(self.y_valid):,} held-out ones"
        return ImageData(self.x_train[it], self.y_train[it], self.x_valid[iv], self.y_valid[iv],
                         self.classes, f"{self.source} ({some})")

    def split(self, valid_pct: float, seed: int = 0) -> ImageData:
        """Hold out `valid_pct` of the training set as the valid set (the test set is unused)."""
        if not 0 < valid_pct < 1:
            raise UsageError(f"valid_pct must be in (0, 1). Received: valid_pct={valid_pct}.")
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self.y_train), generator=g)
        n_valid = int(round(valid_pct * len(perm)))
        iv, it = perm[:n_valid], perm[n_valid:]
        return ImageData(self.x_train[it], self.y_train[it], self.x_train[iv], self.y_train[iv],
                         self.classes, f"{self.source} (held-out {valid_pct:.0%} of train)")


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def missing_idx_files(folder: str | Path) -> list[str]:
    """The MNIST-layout file names that `folder` lacks (raw or .gz), empty when complete."""
    return [name for name in MNIST_FILES.values() if _find(Path(folder), name) is None]


def idx_folder(folder: str | Path, md5: dict[str, str] | None = None,
               n_classes: int | None = None) -> ImageData:
    """Load a dataset in MNIST's layout from a folder holding its four IDX files.

    The files are those of MNIST (train-images-idx3-ubyte and so on, raw or .gz), which is also
    how Fashion-MNIST and KMNIST ship. The valid split is the test set ('t10k'). The classes
    are 0..max(training label), or 0..n_classes-1 when given; a label outside them is an error.

    Raises:
        ValueError: the folder lacks files (they are listed), or a file is bad.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"Data folder not found. Received: {str(folder)!r}. Expected a folder "
                         f"holding {', '.join(MNIST_FILES.values())} (raw or .gz).")
    missing = missing_idx_files(folder)
    if missing:
        raise UsageError(f"Data folder {str(folder)!r} lacks {', '.join(missing)} "
                         f"(raw or .gz).")
    md5 = md5 or {}
    arrays = {}
    for key, name in MNIST_FILES.items():
        arrays[key] = read_idx(_find(folder, name), md5.get(name))  # type: ignore[arg-type]
    for split in ("train", "valid"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        xfile, yfile = MNIST_FILES[f"{split}_images"], MNIST_FILES[f"{split}_labels"]
        if x.ndim != 3 or x.dtype != np.uint8:
            raise UsageError(f"{folder / xfile}: expected uint8 images of shape (N, H, W), "
                             f"got {x.dtype} of shape {x.shape}.")
        if y.ndim != 1:
            raise UsageError(f"{folder / yfile}: expected labels of shape (N,), got {y.shape}.")
        if len(x) != len(y):
            raise UsageError(f"{folder}: {xfile} holds {len(x)} images but {yfile} holds "
                             f"{len(y)} labels.")
        if y.dtype.kind == "f":
            # a float label must be a class index as it stands: NaN would become a huge
            # negative int and 2.5 a silent 2
            wrong = ~np.isfinite(y) | (y != np.round(y)) | (y < 0) | (y >= 2**31)
            if wrong.any():
                i = int(np.flatnonzero(wrong)[0])
                raise UsageError(f"{_find(folder, yfile)}: expected whole-number labels >= 0 "
                                 f"(class indices); found {float(y[i])!r} at position {i} "
                                 f"of these {y.dtype} labels.")
    if len(arrays["train_labels"]) == 0:
        xfile = MNIST_FILES["train_images"]
        raise UsageError(f"{_find(folder, xfile)}: holds 0 images (shape "
                         f"{arrays['train_images'].shape}); expected at least one training "
                         f"image: the classes are read from the training labels.")
    if arrays["train_images"].shape[1:] != arrays["valid_images"].shape[1:]:
        raise UsageError(f"{folder}: train images are {arrays['train_images'].shape[1:]}, "
                         f"test images {arrays['valid_images'].shape[1:]}; they must match.")
    y_train = torch.from_numpy(arrays["train_labels"].astype(np.int64))
    y_valid = torch.from_numpy(arrays["valid_labels"].astype(np.int64))
    label_files = {name: _find(folder, name) for name in
                   (MNIST_FILES["train_labels"], MNIST_FILES["valid_labels"])}
    for name, y in ((MNIST_FILES["train_labels"], y_train), (MNIST_FILES["valid_labels"], y_valid)):
        if len(y) and int(y.min()) < 0:
            raise UsageError(f"{label_files[name]}: labels must be >= 0, found {int(y.min())}.")
    # the classes are those of the training labels, unless the caller knows how many there are
    found = int(y_train.max()) + 1 if len(y_train) else 0
    n_classes = n_classes or found
    if n_classes > 1000:
        raise UsageError(f"{label_files[MNIST_FILES['train_labels']]}: labels go up to "
                         f"{n_classes - 1}; expected class indices below 1000. Are the label "
                         f"files really labels?")
    for name, y in ((MNIST_FILES["train_labels"], y_train), (MNIST_FILES["valid_labels"], y_valid)):
        if len(y) and int(y.max()) >= n_classes:
            raise UsageError(f"{label_files[name]}: label {int(y.max())} is outside the {n_classes}"
                             f" classes (0..{n_classes - 1}).")
    return ImageData(
        torch.from_numpy(arrays["train_images"]).unsqueeze(1),  # (N, 1, H, W)
        y_train,
        torch.from_numpy(arrays["valid_images"]).unsqueeze(1),
        y_valid,
        classes=[str(i) for i in range(n_classes)],
        source=str(folder),
    )


# Pillow's greyscale modes: 1-bit, 8-bit, 32-bit int, 16-bit int (four byte orders), float
GREY_MODES = ("1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def _int_depth(im) -> tuple[int, bool]:
    """(bits, signed) of the samples of an integer greyscale image of mode I or I;16*."""
    if im.mode.startswith("I;16"):
        return 16, False
    # mode I holds 32-bit signed ints whatever the file held; the file says how many it used
    if im.format == "TIFF":
        tags = getattr(im, "tag_v2", {})
        bits, fmt = tags.get(258, 32), tags.get(339, 1)  # BitsPerSample, SampleFormat
        bits, fmt = (v[0] if isinstance(v, tuple) else v for v in (bits, fmt))
        return int(bits), fmt == 2
    if im.format in ("PNG", "PPM"):  # at most 16 bits; Pillow reads PGM as 0..65535
        return 16, False
    return 32, True


def to_8bit(im):
    """`im` with 16- or 32-bit integer greyscale scaled by its bit depth to 8 bits ("L"),
    so its values keep their spread: value * 255 / 65535 for 16 bits (Pillow's own
    convert("L") clips at 255, which turns most such images white). Other modes are
    returned as they are.

    Raises:
        UsageError: a float image (mode F), whose values have no range to scale by.
    """
    from PIL import Image

    if im.mode == "F":
        raise UsageError("mode F (32-bit floating point) greyscale has no fixed range to "
                         "scale to 0-255; expected an 8- or 16-bit image (save it as one)")
    if im.mode != "I" and not im.mode.startswith("I;16"):
        return im
    bits, signed = _int_depth(im)
    low = -(2 ** (bits - 1)) if signed else 0
    scaled = (np.asarray(im).astype(np.float64) - low) * (255 / (2**bits - 1))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def load_image(path: str | Path) -> Tensor:
    """Decode an image file into uint8 (C, H, W): C = 1 for grayscale, 3 for everything else
    (palette, RGBA and CMYK images are converted to RGB). 16- and 32-bit integer grayscale is
    scaled to 0..255 by its bit depth (`to_8bit`). Pillow's decompression-bomb limit stays on.

    Raises:
        ValueError: the file is missing, not an image, truncated, too large, or floating point.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im = to_8bit(im)
            im = im.convert("L") if im.mode in GREY_MODES else im.convert("RGB")
            array = np.asarray(im, dtype=np.uint8)
    except UsageError as e:
        raise UsageError(f"{path}: {e}.") from None
    except FileNotFoundError:
        raise UsageError(f"{path}: no such image file.") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise UsageError(f"{path}: cannot be read as an image: {e}") from None
    except Image.DecompressionBombError as e:
        raise UsageError(f"{path}: refused, too many pixels (a decompression bomb?): {e}") from None
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def cache_dir() -> Path:
    """Where downloaded datasets are kept: $XDG_CACHE_HOME/convscope or ~/.cache/convscope."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "convscope"


def _download_mnist(dest: Path, timeout: float = 20.0) -> None:
    """Fetch the four MNIST files into `dest`, checking each MD5 before keeping it."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, md5 in MNIST_MD5.items():
        if _find(dest, name):
            continue
        errors = []
        for mirror in MNIST_MIRRORS:
            try:
                with urllib.request.urlopen(mirror + name + ".gz", timeout=timeout) as r:
                    payload = r.read()
                got = hashlib.md5(gzip.decompress(payload)).hexdigest()
                if got != md5:
                    raise UsageError(f"checksum mismatch: expected {md5}, got {got}")
            except (urllib.error.URLError, OSError, ValueError, EOFError) as e:
                errors.append(f"{mirror}: {e}")
                continue
            atomic_write_bytes(dest / f"{name}.gz", payload)
            break
        else:
            raise OSError("; ".join(errors))


def mnist(path: str | Path | None = None, download: bool = True) -> ImageData:
    """MNIST: 60,000 training and 10,000 test digits, (N, 1, 28, 28) uint8, checksums verified.

    Looks, in order: `path`; $CONVSCOPE_DATA; the copy embedded in the package; the user cache
    (`cache_dir()/mnist`); then downloads into the cache from public mirrors.

    >>> data = mnist()
    >>> tuple(data.x_train.shape), tuple(data.x_valid.shape)
    ((60000, 1, 28, 28), (10000, 1, 28, 28))
    """
    looked = []
    candidates = []
    if path is not None:
        candidates.append(("path", Path(path)))
    if os.environ.get("CONVSCOPE_DATA"):
        candidates.append(("$CONVSCOPE_DATA", Path(os.environ["CONVSCOPE_DATA"])))
    candidates += [("embedded copy", EMBEDDED_MNIST), ("cache", cache_dir() / "mnist")]
    for label, folder in candidates:
        if folder.is_dir() and not missing_idx_files(folder):
            return idx_folder(folder, md5=MNIST_MD5, n_classes=10)
        looked.append(f"{label} {folder}")
        if label == "path":  # an explicit path that does not hold MNIST is an error, not a hint
            raise UsageError(f"No MNIST at {str(folder)!r}: it lacks "
                             f"{', '.join(missing_idx_files(folder)) or 'the folder itself'}.")
    if download:
        target = cache_dir() / "mnist"
        try:
            _download_mnist(target)
            return idx_folder(target, md5=MNIST_MD5, n_classes=10)
        except OSError as e:
            looked.append(f"download ({e})")
    raise MissingDataError(
        "MNIST not found. Looked in: " + "; ".join(looked) + ". Put the four files "
        f"({', '.join(MNIST_FILES.values())}, raw or .gz) in a folder and pass it as "
        "`--data DIR`, `mnist(path)` or $CONVSCOPE_DATA."
    )


class DataLoader:
    """Batches cut from uint8 images held in memory, normalised on the fly.

    Iterating gives (x, y): x float32 (B, C, H, W), normalised by the per-channel `mean` and
    `std` (in 0..1 units), y int64 (B,). Shuffling draws from a generator seeded with `seed`
    and advanced once per epoch, so a run is repeatable. `restrict` limits the epochs to some
    of the images; `batch_indices` says which images the latest batch holds. A shuffled
    (training) loader never yields a batch of one image, which BatchNorm cannot normalise in
    training mode: a lone last image joins the batch before it (bs + 1 images).
    """

    def __init__(self, x: Tensor, y: Tensor, bs: int, shuffle: bool = False, seed: int = 0,
                 mean: Tensor | None = None, std: Tensor | None = None,
                 drop_last: bool = False) -> None:
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise UsageError(f"Expected uint8 images of shape (N, C, H, W). Received: "
                             f"{x.dtype} of shape {tuple(x.shape)}.")
        if bs < 1:
            raise UsageError(f"Batch size must be at least 1. Received: bs={bs}.")
        self.x, self.y, self.bs = x, y, bs
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rank, self.world_size = 0, 1
        self.indices: Tensor | None = None  # see `restrict`
        self._batch: slice | Tensor = slice(0, 0)
        self.generator = torch.Generator().manual_seed(seed)
        c = x.shape[1]
        mean = torch.full((c,), 0.5) if mean is None else mean
        std = torch.full((c,), 0.5) if std is None else std
        # x_norm = (x/255 - mean) / std  ==  x * scale + shift, one fused op per batch
        self.scale = (1 / (255 * std)).view(1, c, 1, 1).to(x.device)
        self.shift = (-mean / std).view(1, c, 1, 1).to(x.device)

    @property
    def device(self) -> torch.device:
        return self.x.device

    def shard(self, rank: int, world_size: int) -> DataLoader:
        """Make this loader yield only rank `rank`'s share of the batches: every process
        draws the same order (same seed) and takes batches rank, rank + world_size, ...
        Shuffled (training) loaders drop the last few batches so every rank has as many, and
        a lone last image with them."""
        if not 0 <= rank < world_size:
            raise UsageError(f"Expected 0 <= rank < world_size. Received: rank={rank}, "
                             f"world_size={world_size}.")
        self.rank, self.world_size = rank, world_size
        return self

    def restrict(self, indices: Tensor | None) -> DataLoader:
        """Draw the next epochs from the images at `indices` (positions in `x`, each once)
        only, shuffled among themselves when the loader shuffles; None: every image again.
        Sharding, `len` and a resumed epoch's order follow the restriction."""
        if indices is not None:
            indices = torch.as_tensor(indices, dtype=torch.long).flatten().cpu()
            n = len(self.y)
            if len(indices) == 0 or int(indices.min()) < 0 or int(indices.max()) >= n:
                raise UsageError(f"restrict: expected a non-empty set of image positions in "
                                 f"[0, {n}). Received {len(indices)} positions"
                                 + (f" from {int(indices.min())} to {int(indices.max())}."
                                    if len(indices) else "."))
            if len(indices.unique()) != len(indices):
                raise UsageError("restrict: expected each image position once. Received "
                                 "repeated positions.")
        self.indices = indices
        return self

    @property
    def n_images(self) -> int:
        """How many images an epoch draws from (all of them unless restricted)."""
        return len(self.y) if self.indices is None else len(self.indices)

    def n_batches(self, n_images: int | None = None) -> int:
        """This rank's batches in an epoch over `n_images` images (default: the epoch as the
        loader stands)."""
        n = self.n_images if n_images is None else n_images
        return len(range(self.rank, self._global_batches(n), self.world_size))

    def _lone_last(self, n_images: int) -> bool:
        """Whether an epoch over `n_images` would end in a training batch of one image:
        BatchNorm cannot normalise one value per channel, so that image is not a batch."""
        return (self.shuffle and not self.drop_last and self.bs > 1 and n_images > 1
                and n_images % self.bs == 1)

    def _global_batches(self, n_images: int) -> int:
        """The batches of an epoch over `n_images`, over every rank."""
        n = n_images // self.bs if self.drop_last else math.ceil(n_images / self.bs)
        n -= int(self._lone_last(n_images))
        if self.world_size > 1 and self.shuffle:
            # equal counts: a rank waiting for a gradient that never comes hangs
            n = n // self.world_size * self.world_size
        return n

    def _stop(self, i: int, n_images: int) -> int:
        """Where global batch `i` of an epoch over `n_images` ends (exclusive)."""
        stop = min((i + 1) * self.bs, n_images)
        # one process: the lone last image joins the last batch, so none is left out. Sharded,
        # it stays out with the other leftovers: a merged batch would be bs + 1 on one rank
        # only, and the ranks' batches are gathered into buffers of bs.
        if self.world_size == 1 and n_images - stop == 1 and self._lone_last(n_images):
            stop = n_images
        return stop

    @property
    def batch_indices(self) -> Tensor:
        """The positions in `x` of the images of the latest batch drawn (on the loader's
        device)."""
        b = self._batch
        if isinstance(b, slice):
            return torch.arange(b.start, b.stop, device=self.device)
        return b

    def _mine(self) -> range:
        """The global batch indices of this rank's shard, in order."""
        return range(self.rank, self._global_batches(self.n_images), self.world_size)

    def __len__(self) -> int:
        return self.n_batches()

    def __repr__(self) -> str:
        order = "shuffled" if self.shuffle else "in order"
        some = f"{self.n_images} (restricted) of " if self.indices is not None else ""
        shape = " x ".join(map(str, self.x.shape[1:]))
        return (f"DataLoader: {some}{len(self.y)} images of {shape} "
                f"in {len(self)} batches of {self.bs} ({order}) on {self.device}")

    def normalize(self, xb: Tensor) -> Tensor:
        """uint8 (B, C, H, W) -> float32 (B, C, H, W), normalised."""
        return torch.addcmul(self.shift, xb.float(), self.scale)

    def decode(self, xb: Tensor) -> Tensor:
        """Normalised float batch -> uint8 pixels, the inverse of `normalize`."""
        return ((xb - self.shift) / self.scale).round().clamp(0, 255).to(torch.uint8)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.batches()

    def batches(self, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """This epoch's batches from batch `start` on (the shuffle covers the whole epoch,
        so a resumed epoch sees the same order). `epoch_state` keeps the shuffling
        generator's state as it was before this epoch's draw."""
        self.epoch_state = self.generator.get_state()
        order = self.indices
        if self.shuffle:
            perm = torch.randperm(self.n_images, generator=self.generator)
            order = perm if order is None else order[perm]
        if order is not None:
            order = order.to(self.device)
        n = self.n_images
        for i in self._mine()[start:]:
            if order is None:
                self._batch = sl = slice(i * self.bs, self._stop(i, n))
                xb, yb = self.x[sl], self.y[sl]
            else:
                self._batch = idx = order[i * self.bs:self._stop(i, n)]
                xb, yb = self.x[idx], self.y[idx]
            yield self.normalize(xb), yb

    def one_batch(self) -> tuple[Tensor, Tensor]:
        """The first batch, leaving the loader as it was: the shuffling generator is not
        advanced and `epoch_state` (what a mid-epoch checkpoint resumes from) is kept, so this
        is safe to call from a callback during training."""
        state = self.generator.get_state()
        epoch_state = getattr(self, "epoch_state", None)
        batch = next(iter(self))
        self.generator.set_state(state)
        if epoch_state is not None:
            self.epoch_state = epoch_state
        return batch


STATS_AT_ONCE = 64 << 20  # values


def channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in 0..1 units.

    A set of up to 64 MB is taken as floats at once (MNIST's statistics, and so every
    figure pinned to them, come from that); a larger one in chunks, summed in float64, so
    the statistics never hold a float copy of the set: four times its uint8 size."""
    if x.numel() <= STATS_AT_ONCE:
        xf = x.float()
        return xf.mean(dim=(0, 2, 3)) / 255, xf.std(dim=(0, 2, 3)).clamp_min(1e-3) / 255
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    chunk = max(1, (16 << 20) // max(1, x[0].numel()))
    for first in range(0, len(x), chunk):
        xb = x[first:first + chunk].to(torch.float64)
        total += xb.sum(dim=(0, 2, 3))
        squares += xb.square().sum(dim=(0, 2, 3))
    n = x.numel() // c
    mean = total / n
    var = (squares - n * mean.square()) / max(1, n - 1)
    std = var.clamp_min(0).sqrt()
    return (mean / 255).float(), (std.clamp_min(1e-3) / 255).float()


class DataLoaders:
    """A train and a valid DataLoader with the class names they share."""

    def __init__(self, train: DataLoader, valid: DataLoader, classes: list[str]) -> None:
        self.train, self.valid, self.classes = train, valid, classes

    def __repr__(self) -> str:
        t, v = self.train, self.valid
        names = ", ".join(self.classes[:10]) + (", ..." if len(self.classes) > 10 else "")
        return (f"DataLoaders: train {len(t.y)} images in {len(t)} batches of {t.bs} "
                f"(shuffled), valid {len(v.y)} in {len(v)} batches of {v.bs}; images of "
                f"{' x '.join(map(str, t.x.shape[1:]))}, {self.c} classes ({names}), on "
                f"{self.device}")

    @property
    def c(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train.x.shape[1]

    @property
    def device(self) -> torch.device:
        return self.train.device

    @classmethod
    def from_data(cls, data: ImageData, bs: int = 512, seed: int = 0,
                  device: str | torch.device = "cpu", valid_bs: int | None = None,
                  stats: tuple[Tensor, Tensor] | None = None) -> DataLoaders:
        """Put `data` on `device` and make loaders; normalisation stats come from the train set.

        Args:
            data: the images and labels.
            bs: training batch size; the valid set uses `valid_bs` (default 2 * bs), since
                evaluation keeps no activations for a backward pass.
            seed: seeds the shuffling of the training set.
            device: where the data and every batch live.
            stats: per-channel (mean, std) in 0..1 units, e.g. those a model was trained with;
                computed from the training images when None.
        """
        if bs < 1:
            raise UsageError(f"Batch size must be at least 1. Received: bs={bs}.")
        if len(data.y_train) == 0 or len(data.y_valid) == 0:
            raise UsageError(f"Need images in both splits. Received: {len(data.y_train)} train "
                             f"and {len(data.y_valid)} valid images.")
        mean, std = channel_stats(data.x_train) if stats is None else stats
        dev = torch.device(device)
        train = DataLoader(data.x_train.to(dev), data.y_train.to(dev), bs, shuffle=True,
                           seed=seed, mean=mean, std=std)
        valid = DataLoader(data.x_valid.to(dev), data.y_valid.to(dev), valid_bs or 2 * bs,
                           mean=mean, std=std)
        return cls(train, valid, data.classes)

    @property
    def stats(self) -> tuple[Tensor, Tensor]:
        """The per-channel (mean, std), in 0..1 units, that batches are normalised with."""
        scale, shift = self.train.scale.flatten().cpu(), self.train.shift.flatten().cpu()
        std = 1 / (255 * scale)
        return -shift * std, std

    def show_batch(self, n: int = 9, save: str | Path | None = None, valid: bool = False,
                   tfm=None):
        """Draw `n` images of a batch in a grid with their labels; return the figure.

        Args:
            n: how many images (at most one batch).
            save: a PNG path to write, or None.
            valid: take the batch from the valid set rather than the (shuffled) train set.
            tfm: a function of the normalised batch, e.g. `learn.batch_augment.apply`, to
                show the images as the model is fed them.
        """
        from convscope import plots

        dl = self.valid if valid else self.train
        xb, yb = dl.one_batch()
        if tfm is not None:
            xb = tfm(xb)
        images = dl.decode(xb[:n]).cpu()
        labels = [self.classes[int(i)] for i in yb[:n].cpu()]
        return plots.show_images(images, labels, save=save)
