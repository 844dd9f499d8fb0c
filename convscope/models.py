"""Models: `simple_cnn`, the MNIST model chapter 13 ends with.

Five stride-2 conv blocks take a 28x28 digit to 14, 7, 4, 2 and finally 1x1 with one channel
per class, so Flatten leaves the logits. The first kernel is 5x5: with a 3x3 kernel the first
layer would see 9 pixels and output 8 channels, barely a transformation at all. Filters double
after each stride-2 conv so the compute per layer stays about the same as the grid shrinks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from torch import Tensor, nn

from convscope.errors import UsageError
from convscope.layers import Flatten, conv


class SimpleCNN(nn.Sequential):
    """An nn.Sequential of conv blocks that checks its input before running it."""

    def __init__(self, *layers: nn.Module, in_channels: int, min_size: int,
                 arguments: dict | None = None) -> None:
        super().__init__(*layers)
        self.in_channels, self.min_size = in_channels, min_size
        # what simple_cnn was called with: a run folder records it to rebuild the model
        self.arguments = arguments or {}

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels or min(x.shape[-2:]) < self.min_size:
            raise UsageError(
                f"simple_cnn expects images of shape (N, {self.in_channels}, H, W) with H, W >= "
                f"{self.min_size}. Received: {tuple(x.shape)}."
                + (" A colour image into a 1-channel model? Build it with "
                   f"simple_cnn(in_channels={x.shape[1]})." if x.ndim == 4 else "")
            )
        return super().forward(x)


def simple_cnn(in_channels: int = 1, n_classes: int = 10,
               widths: Sequence[int] = (8, 16, 32, 64), first_ks: int = 5,
               bn: bool = True) -> SimpleCNN:
    """The book's final MNIST model: conv(1,8,ks=5), conv(8,16), conv(16,32), conv(32,64),
    conv(64,10, act=False), Flatten.

    Args:
        in_channels: 1 for grayscale, 3 for colour.
        n_classes: output channels of the last conv, one logit each.
        widths: filters of the hidden conv blocks; the book doubles them after each stride 2.
        first_ks: kernel size of the first conv (5 in the book, 3 in its first model).
        bn: batchnorm after each conv but the last.
    Returns:
        a model mapping (N, in_channels, H, W) to logits (N, n_classes) for 28x28 input.

    >>> import torch
    >>> simple_cnn()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """
    if not widths:
        raise UsageError("widths must name at least one hidden layer, e.g. (8, 16, 32, 64).")
    chans = [in_channels, *widths]
    blocks = [conv(ni, nf, ks=first_ks if i == 0 else 3, bn=bn)
              for i, (ni, nf) in enumerate(zip(chans[:-1], chans[1:], strict=True))]
    blocks.append(conv(chans[-1], n_classes, act=False, bn=bn))
    # After len(widths)+1 stride-2 convs a 28x28 image is 1x1; bigger input leaves a grid
    # that Flatten would turn into more than n_classes outputs, so average it away first.
    return SimpleCNN(*blocks, nn.AdaptiveAvgPool2d(1), Flatten(),
                     in_channels=in_channels, min_size=1,
                     arguments={"in_channels": in_channels, "n_classes": n_classes,
                                "widths": list(widths), "first_ks": first_ks, "bn": bn})


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode inside the block, back in the mode it had after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def build_model(spec: str, in_channels: int, n_classes: int,
                widths: Sequence[int] = (8, 16, 32, 64), first_ks: int = 5,
                bn: bool = True) -> nn.Module:
    """The model `--model` names: simple_cnn (with these widths, first kernel and batchnorm),
    book_first (the chapter's first CNN: widths 4-8-16-32, 3x3, no batchnorm), or
    FILE.py:FUNCTION, the user's function called as FUNCTION(in_channels, n_classes)."""
    if spec == "simple_cnn":
        return simple_cnn(in_channels, n_classes, widths=widths, first_ks=first_ks, bn=bn)
    if spec == "book_first":
        return simple_cnn(in_channels, n_classes, widths=(4, 8, 16, 32), first_ks=3, bn=False)
    fn, _ = user_function(spec)
    try:
        model = fn(in_channels, n_classes)
    except Exception as e:  # the user's code: its failure is theirs to read, in one line
        raise UsageError(f"--model {spec}: calling it with in_channels={in_channels}, "
                         f"n_classes={n_classes} failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"--model {spec}: expected the function to return an nn.Module, "
                         f"received {type(model).__name__}")
    return model


def file_sha256(spec: str) -> str | None:
    """The SHA-256 of the file a FILE.py:FUNCTION model comes from (None for a built-in)."""
    import hashlib
    from pathlib import Path

    path, sep, _ = spec.rpartition(":")
    if not sep or not path.endswith(".py"):
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as e:
        raise UsageError(f"--model: cannot read {path!r}: {e.strerror or e}") from None


def user_function(spec: str):
    """(the function FILE.py:FUNCTION names, its file's SHA-256). Importing the file runs it:
    it is the user's own code, named on their command line."""
    import importlib.util
    from pathlib import Path

    path, sep, name = spec.rpartition(":")
    if not sep or not path.endswith(".py"):
        raise UsageError(f"--model: expected simple_cnn, book_first or FILE.py:FUNCTION, "
                         f"received {spec!r}")
    digest = file_sha256(spec)
    module_spec = importlib.util.spec_from_file_location(f"convscope_model_{digest[:16]}",
                                                         Path(path))
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise UsageError(f"--model: importing {path!r} failed: {type(e).__name__}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UsageError(f"--model: {path!r} has no function {name!r}")
    return fn, digest


def model_from_metadata(meta: dict[str, str]) -> nn.Module:
    """The untrained model a run's weights' metadata describes (`model.safetensors`: model,
    in_channels, n_classes; for simple_cnn and book_first widths, first_ks and bn as JSON; for
    a user's FILE.py:FUNCTION the file's SHA-256, checked); a UsageError says what does not
    fit."""
    spec = meta.get("model", "")
    if spec in ("simple_cnn", "book_first"):
        return simple_cnn_from_metadata(meta)
    if not spec:
        raise UsageError("no model is named in the metadata")
    saved = meta.get("model_sha256")
    now = file_sha256(spec)
    if now is None:
        raise UsageError(f"a model convscope cannot rebuild ({spec!r}); expected simple_cnn, "
                         f"book_first or FILE.py:FUNCTION")
    if saved != now:
        raise UsageError(f"{spec.rpartition(':')[0]} changed since the run was trained (its "
                         f"SHA-256 is not the one recorded)")
    try:
        return build_model(spec, int(meta["in_channels"]), int(meta["n_classes"]))
    except (KeyError, ValueError) as e:
        raise UsageError(f"its metadata lacks the input channels or classes ({e})") from None


def simple_cnn_from_metadata(meta: dict[str, str]) -> SimpleCNN:
    """The untrained simple_cnn a run's weights' metadata describes (`model.safetensors`:
    in_channels, n_classes, and widths, first_ks and bn as JSON); a UsageError says what in
    the metadata does not describe one."""
    import json

    if meta.get("model") not in ("simple_cnn", "book_first"):
        raise UsageError(f"a model convscope cannot rebuild ({meta.get('model')!r}); expected "
                         f"'simple_cnn'")
    try:
        widths = json.loads(meta.get("widths") or "[8, 16, 32, 64]")
        first_ks = json.loads(meta.get("first_ks") or "5")
        bn = json.loads(meta.get("bn", "true"))
        if not (isinstance(widths, list) and all(isinstance(w, int) and w > 0 for w in widths)
                and isinstance(first_ks, int) and first_ks > 0 and isinstance(bn, bool)):
            raise ValueError("widths, first_ks or bn of the wrong type")
        return simple_cnn(in_channels=int(meta["in_channels"]), n_classes=int(meta["n_classes"]),
                          widths=tuple(widths), first_ks=first_ks, bn=bn)
    except (KeyError, ValueError, TypeError) as e:
        raise UsageError(f"its metadata does not describe a simple_cnn ({e}). Received: "
                         f"in_channels={meta.get('in_channels')!r}, n_classes="
                         f"{meta.get('n_classes')!r}, widths={meta.get('widths')!r}, first_ks="
                         f"{meta.get('first_ks')!r}, bn={meta.get('bn')!r}; expected whole "
                         f"numbers, a list of them and true/false") from None
