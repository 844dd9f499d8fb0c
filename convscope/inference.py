"""Using a trained model: `predict` an image as training fed it, `show_results`, and `export`
to one file that `load_learner` reads back, as fastai's Learner.predict, show_results, export
and load_learner do, without pickle.

An export is a safetensors file: the weights, and metadata in plain JSON strings that say how
to rebuild the model and feed it (the model and its arguments, the classes, the image shape
and mode, the normalisation, the convscope version and the format version). A run folder's
model.safetensors is one too. Loading never runs code the file names: a built-in model is
rebuilt from its arguments, and any other model only from a constructor the caller passes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from convscope.errors import UsageError
from convscope.files import atomic_write_bytes, check_format_version

FORMAT = "convscope-export"
VERSION = 1
BUILT_IN = ("simple_cnn", "book_first")
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


@dataclass(frozen=True)
class Prediction:
    """What `predict` returns: the class name, its index, and every class's probability."""

    label: str
    index: int
    probs: Tensor
    classes: tuple[str, ...]
    note: str | None = None  # an image unlike the training images (see `predict`)

    @property
    def probability(self) -> float:
        return float(self.probs[self.index])

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The k most probable classes, with their probabilities."""
        values, idx = self.probs.topk(min(k, len(self.probs)))
        return [(self.classes[i], float(v)) for v, i in zip(values, idx.tolist(), strict=True)]

    def __iter__(self):  # label, index, probs = learn.predict(img), as fastai unpacks it
        return iter((self.label, self.index, self.probs))


def as_uint8(item, shape: tuple[int, int, int]) -> Tensor:
    """An image (a file path, a PIL image, a uint8 array or tensor of HxW, HxWxC or CxHxW, any
    size or mode) as uint8 (C, H, W) of the `shape` a model was trained on: the channels as
    training had them (grey or RGB; 16-bit scaled by its depth), resized as image folders are
    (bilinear, squashed)."""
    from PIL import Image

    from convscope.data import load_image, to_8bit

    c, h, w = shape
    mode = "L" if c == 1 else "RGB"
    if isinstance(item, (str, Path)):
        item = load_image(item)  # refuses unreadable files in one line
    if isinstance(item, Image.Image):
        im = to_8bit(item).convert(mode)
    else:
        array = item.detach().cpu().numpy() if isinstance(item, Tensor) else np.asarray(item)
        if array.dtype != np.uint8:
            raise UsageError(f"predict: expected uint8 pixels (0-255), received {array.dtype}; "
                             f"pass a file, a PIL image, or uint8 values")
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
            array = array.transpose(1, 2, 0)  # CxHxW -> HxWxC
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
            raise UsageError(f"predict: expected an image of HxW, HxWxC or CxHxW, received "
                             f"shape {tuple(array.shape)}")
        im = Image.fromarray(np.ascontiguousarray(array)).convert(mode)
    if im.size != (w, h):
        im = im.resize((w, h), Image.Resampling.BILINEAR)
    out = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy())
    return out.unsqueeze(0) if out.ndim == 2 else out.permute(2, 0, 1).contiguous()


def predict(learn, item) -> Prediction:
    """`learn.predict(item)`: the model's prediction for one image, preprocessed exactly as
    its training batches were (channels, size, normalisation)."""
    from convscope.models import eval_mode

    shape = tuple(learn.dls.train.x.shape[1:])
    x = as_uint8(item, shape).to(learn.dls.device)[None]
    with torch.inference_mode(), eval_mode(learn.model) as model:
        probs = model(learn.dls.train.normalize(x)).float().softmax(dim=1)[0].cpu()
    index = int(probs.argmax())
    classes = tuple(learn.dls.classes)
    # a black digit on white fed to a model of MNIST's white digits on black is read as
    # another digit, confidently: say so rather than let the number speak alone
    seen, trained = float(x.float().mean()) / 255, float(learn.dls.stats[0].mean())
    note = None
    if abs(seen - trained) > 0.35:
        note = (f"this image is much {'brighter' if seen > trained else 'darker'} than the "
                f"training images (mean {seen:.2f} against {trained:.2f}, on 0-1); if its "
                f"colours are inverted (MNIST's digits are white on black), invert it first")
    return Prediction(classes[index], index, probs, classes, note)


def show_results(learn, n: int = 9, save: str | Path | None = None):
    """`learn.show_results(n)`: the first n images of the valid set, each titled with its
    target and the model's prediction, the wrong ones in red; returns the figure."""
    from convscope import plots

    dl = learn.dls.valid
    if len(dl.y) == 0:
        raise UsageError("show_results draws the valid set, and this learner has none (a "
                         "learner from load_learner has no data): predict your own images")
    preds, targs = learn.get_preds()
    k = min(n, len(targs))
    classes = learn.dls.classes
    titles = [(classes[int(t)], classes[int(p)]) for t, p in
              zip(targs[:k], preds[:k].argmax(dim=1), strict=True)]
    return plots.show_results(dl.x[:k].cpu(), titles, save=save)


def model_metadata(learn, spec: str | None = None) -> dict[str, str]:
    """What an export (and a run folder's model.safetensors) records beside the weights:
    the model (`spec`, or simple_cnn's own record of its arguments), the classes, the input
    shape, the normalisation, and the format."""
    from convscope import __version__

    mean, std = learn.dls.stats
    model = getattr(learn.model, "module", learn.model)  # the model inside a DDP wrapper
    args = getattr(model, "arguments", None)
    meta = {"format": FORMAT, "version": str(VERSION), "convscope": __version__,
            "model": spec or ("simple_cnn" if args else _class_name(model)),
            "in_channels": str(learn.dls.in_channels), "n_classes": str(learn.dls.c),
            "classes": json.dumps(list(learn.dls.classes)),
            "input_shape": json.dumps(list(learn.dls.train.x.shape[1:])),
            "mean": json.dumps(mean.tolist()), "std": json.dumps(std.tolist())}
    if args:  # simple_cnn's arguments rebuild it, book_first included
        meta.update(bn=json.dumps(args["bn"]), widths=json.dumps(args["widths"]),
                    first_ks=json.dumps(args["first_ks"]))
    return meta


def _class_name(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def save_model(model: nn.Module, path: str | Path, metadata: dict[str, str]) -> Path:
    """The model's weights with `metadata`, as safetensors, written atomically."""
    from safetensors.torch import save

    model = getattr(model, "module", model)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return Path(path)


def export(learn, path: str | Path) -> Path:
    """`learn.export(path)`: one file that `load_learner` turns back into a learner that
    predicts as this one does."""
    return save_model(learn.model, path, model_metadata(learn))


def read_export(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The weights and metadata of an export (or a run folder's model.safetensors), checked:
    a missing, damaged, foreign or newer file is one UsageError."""
    from convscope.files import read_safetensors_bytes

    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise UsageError(f"{str(path)!r}: no such file; expected a run folder or a file "
                         f"written by learn.export")
    # run folders written before exports named their format are read as exports too
    state, meta = read_safetensors_bytes(path.read_bytes(), str(path), FORMAT,
                                         "a convscope export", unnamed=True)
    check_format_version(meta, VERSION, path, "export", default="1")
    try:
        shape = json.loads(meta["input_shape"])
        classes = json.loads(meta["classes"])
        mean, std = json.loads(meta["mean"]), json.loads(meta["std"])
        if not (isinstance(shape, list) and len(shape) == 3 and all(
                isinstance(v, int) and v > 0 for v in shape)
                and isinstance(classes, list) and all(isinstance(c, str) for c in classes)
                and len(mean) == len(std) == shape[0]):
            raise ValueError("input_shape, classes, mean or std of the wrong shape")
    except (KeyError, ValueError, TypeError) as e:
        raise UsageError(f"{path}: its metadata does not say how to feed the model: "
                         f"expected input_shape [C, H, W], classes a list of names, and a "
                         f"mean and std per channel ({e}). Received: input_shape="
                         f"{meta.get('input_shape')!r}, classes={meta.get('classes')!r}, "
                         f"mean={meta.get('mean')!r}, std={meta.get('std')!r}") from None
    return state, meta


def rebuild(path: str | Path, model: Callable[[int, int], nn.Module] | str | None = None,
            who: str = "convscope") -> tuple[nn.Module, dict[str, str]]:
    """The trained model an export (or a run folder) holds, and its metadata. simple_cnn and
    book_first are rebuilt from the metadata; any other model only from what the caller
    names: a function (in_channels, n_classes) -> nn.Module, or "FILE.py:FUNCTION" (a
    command line's --model), which must be the one the run recorded, file SHA-256 included.
    A path in a file's metadata is never run on its own say-so. `who`: the command, for
    messages."""
    from convscope.models import model_from_metadata, simple_cnn_from_metadata

    state, meta = read_export(path)
    path = Path(path) / "model.safetensors" if Path(path).is_dir() else Path(path)
    shape = json.loads(meta["input_shape"])
    named = meta.get("model", "")
    try:
        if callable(model):
            built = model(shape[0], len(json.loads(meta["classes"])))
        elif named in BUILT_IN:
            built = simple_cnn_from_metadata(meta)
        elif model is None:
            raise UsageError(f"the run was trained with your model {named!r}, which {who} "
                             f"does not build on a file's say-so; {who} runs it only when you "
                             f"name it: add --model {named} (in Python: load_learner(path, "
                             f"model=your_function))")
        else:
            file, _, fn = model.rpartition(":")
            if f"{Path(file).resolve()}:{fn}" != named:
                raise UsageError(f"--model {model} is not the model the run recorded "
                                 f"({named!r})")
            built = model_from_metadata(meta)  # checks the file's SHA-256
        built.load_state_dict(state)
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None
    except RuntimeError as e:  # weights of other shapes than the metadata says
        raise UsageError(f"{path}: its weights do not fit the model its metadata describes: "
                         f"{str(e).splitlines()[0]}") from None
    return built.eval(), meta


def load_learner(path: str | Path, model: Callable[[int, int], nn.Module] | str | None = None,
                 device: str = "cpu"):
    """A learner for inference from an export or a run folder: `predict`, `get_preds` on
    your own loader, `export` again. `model`: see `rebuild` (needed for any model but
    simple_cnn and book_first)."""
    from convscope.config import resolve_device
    from convscope.data import DataLoader, DataLoaders
    from convscope.learner import Learner

    built, meta = rebuild(path, model)
    shape = tuple(json.loads(meta["input_shape"]))
    classes = json.loads(meta["classes"])
    # no images: loaders that hold the shape, the classes and the normalisation predict uses
    dev = resolve_device(device)
    empty = torch.zeros((0, *shape), dtype=torch.uint8, device=dev)
    labels = torch.zeros(0, dtype=torch.long, device=dev)
    mean, std = torch.tensor(json.loads(meta["mean"])), torch.tensor(json.loads(meta["std"]))
    dls = DataLoaders(DataLoader(empty, labels, 64, mean=mean, std=std),
                      DataLoader(empty, labels, 128, mean=mean, std=std), classes)
    learn = Learner(dls, built, cbs=[], progress=False)
    learn.model.eval()
    return learn


def image_files(paths: list[str | Path]) -> list[Path]:
    """The files named, a folder standing for every image under it (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file()
                          and f.suffix.lower() in SUFFIXES)
        else:
            out.append(p)
    return out
