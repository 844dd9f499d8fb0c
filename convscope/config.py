"""TrainConfig: every setting of a training run, each declared once.

A setting is one dataclass field whose `Option` says everything about it: its command-line
flag, help, how a typed value is parsed and checked, what the report calls it, what an unset
value means, and whether `--resume` may change it. The CLI builds its parser from these
declarations, TrainConfig checks its values with them, and the report names settings by
them: adding an option is one field here.

Importable without torch (the CLI's `--help` must answer at once); the checks that need torch
(the device) import it when a config is made.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from convscope import recipes
from convscope.errors import UsageError


@dataclass(frozen=True)
class Option:
    """How one setting appears to the user.

    Args:
        flag: the command-line flag (`--epochs`); for a switch that turns a default-on
            setting off, the `--no-...` flag.
        help: one line for `--help` (the default is appended).
        label: what the report calls the setting.
        kind: parses the typed text (int, float, str); None for a switch.
        check: a value passes when check(value) is true; `expected` says what passes.
        unset: what None means, for the report and `--help`.
        choices: the accepted values, when they are few.
        resumable: `--resume` may change it (the device: same arithmetic, other hardware; the
            processes per machine, as long as the world size stays what the checkpoint says).
        metavar: the placeholder in `--help`.
        absent: for a setting added after runs were written, the value a run folder without
            it trained with (what `--resume` of such a run uses); None: the default.
    """

    flag: str
    help: str
    label: str
    kind: Callable[[str], Any] | None = None
    check: Callable[[Any], bool] | None = None
    expected: str = ""
    unset: str | None = None
    choices: tuple[str, ...] | None = None
    resumable: bool = False
    metavar: str | None = None
    absent: Any = None

    def validate(self, name: str, value: Any) -> None:
        """Raise a UsageError naming the flag when `value` does not pass."""
        if value is None or self.kind is None:
            return
        if self.kind in (int, float) and (isinstance(value, bool) or not isinstance(
                value, (int, float) if self.kind is float else int)):
            raise UsageError(f"{self.flag}: expected {self.expected or 'a number'}, received "
                             f"{value!r}")
        if self.kind is str and not isinstance(value, str):
            raise UsageError(f"{self.flag}: expected text, received {value!r}")
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"{self.flag}: expected one of {', '.join(self.choices)}, "
                             f"received {value!r}")
        if self.check is not None and not self.check(value):
            raise UsageError(f"{self.flag}: expected {self.expected}, received {value!r}")


def option(default: Any, **kw: Any) -> Any:
    """A dataclass field carrying its Option."""
    return field(default=default, metadata={"option": Option(**kw)})


def _learning_rate(v: float) -> bool:
    # far past 10 no CNN trains (lr_find's sweep ends there) and the arithmetic can
    # overflow; a typo such as 1e308 is refused before any work
    return 0 < v <= 1000


# torch seeds its generators with a 64-bit integer; Python's are larger
MAX_SEED = 2**63 - 1

# the models `--model` names (models.build_model builds them); any other is FILE.py:FUNCTION
BUILT_IN_MODELS = {
    "simple_cnn": "the book's final model: conv blocks of conv -> batchnorm -> ReLU, widths "
                  "8-16-32-64 (--widths), a 5x5 first kernel (--first-ks), stride 2",
    "book_first": "the chapter's first CNN (3s vs 7s): widths 4-8-16-32, a 3x3 first kernel, "
                  "no batchnorm",
}
DEFAULT_WIDTHS = "8,16,32,64"


def _model_spec(v: str) -> bool:
    path, sep, name = v.rpartition(":")
    return v in BUILT_IN_MODELS or bool(sep and path.endswith(".py") and name.isidentifier())


def _widths(v: str) -> bool:
    parts = v.split(",")
    return all(p.strip().isdigit() and int(p) > 0 for p in parts)


def parse_widths(v: str) -> tuple[int, ...]:
    """"8,16,32,64" -> (8, 16, 32, 64)."""
    return tuple(int(p) for p in v.split(","))


def _from_recipe(name: str) -> str:
    """What an option the recipes set defaults to, for `--help` and the report."""
    return "the recipe's: " + ", ".join(
        f"{r.name} {_shown(r.settings[name])}" for r in recipes.RECIPES.values())


def _shown(value: Any) -> str:
    return ("yes" if value else "no") if isinstance(value, bool) else f"{value:g}"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; see each field's Option (or `convscope train
    --help`) for what it means. Paths are stored as given; `resolved()` makes them absolute,
    as config.json keeps them."""

    data: str | None = option(
        None, flag="--data", kind=str, metavar="DIR", label="data",
        unset="MNIST (embedded in the package)",
        help="a folder with the four MNIST-layout IDX files, or one folder of images per class")
    recipe: str = option(
        recipes.DEFAULT, flag="--recipe", kind=str, choices=tuple(recipes.RECIPES),
        label="recipe", absent=recipes.DEFAULT,
        help="the settings to start from (book: the chapter's final run; fast: beyond the "
             "book); the options below override it")
    epochs: int | None = option(
        None, flag="--epochs", kind=int, metavar="N", check=lambda v: v >= 0,
        expected="an integer >= 0", label="epochs", unset=_from_recipe("epochs"),
        help="passes over the training set")
    hard: float | None = option(
        None, flag="--hard", kind=float, metavar="F", check=lambda v: 0 < v <= 1,
        expected="a number in (0, 1]", label="share of images, epochs after the first",
        absent=1.0, unset=_from_recipe("hard"),
        help="epochs after the first train on the share F of the training images with the "
             "highest loss when last seen (1: every image every epoch)")
    lr: float | None = option(
        None, flag="--lr", kind=float, metavar="X", check=_learning_rate,
        expected="a number > 0 and <= 1000", label="learning rate", unset=_from_recipe("lr"),
        help="the peak of the 1cycle schedule (with --schedule constant: the rate throughout)")
    bs: int | None = option(
        None, flag="--bs", kind=int, metavar="N", check=lambda v: v >= 1,
        expected="an integer >= 1", label="batch size", unset=_from_recipe("bs"),
        help="training batch size, per process (evaluation uses twice that)")
    seed: int = option(
        0, flag="--seed", kind=int, metavar="N", check=lambda v: 0 <= v <= MAX_SEED,
        expected=f"an integer from 0 to {MAX_SEED}",
        label="seed", help="seeds the initial weights and the shuffling")
    out: str = option(
        "runs/latest", flag="--out", kind=str, metavar="DIR", label="run folder",
        help="the run folder")
    device: str = option(
        "cpu", flag="--device", kind=str, metavar="D", label="device", resumable=True,
        help="cpu, cuda or cuda:N")
    subset: int | None = option(
        None, flag="--subset", kind=int, check=lambda v: v >= 1, expected="an integer >= 1",
        metavar="N", label="training images", unset="all images",
        help="train on N random training images")
    valid_pct: float | None = option(
        None, flag="--valid-pct", kind=float, check=lambda v: 0 < v < 1,
        expected="a number between 0 and 1", metavar="P", label="held-out share",
        unset="the dataset's own split (20% held out if it has none)",
        help="hold out P of the training set as the valid set instead of the test set")
    schedule: str = option(
        "one_cycle", flag="--schedule", kind=str, choices=("one_cycle", "constant"),
        label="schedule", help="one_cycle (fit_one_cycle) or constant (fit: the lr throughout)")
    model: str = option(
        "simple_cnn", flag="--model", kind=str, metavar="NAME", check=_model_spec,
        absent="simple_cnn",
        expected="simple_cnn, book_first, or FILE.py:FUNCTION", label="model",
        help="simple_cnn, book_first, or FILE.py:FUNCTION: a function of yours that returns an "
             "nn.Module given the input channels and the number of classes")
    widths: str = option(
        DEFAULT_WIDTHS, flag="--widths", kind=str, metavar="W,W,...", check=_widths,
        absent=DEFAULT_WIDTHS,
        expected="whole numbers > 0 separated by commas, e.g. 8,16,32,64",
        label="simple_cnn widths", help="simple_cnn's hidden conv widths")
    first_ks: int = option(
        5, flag="--first-ks", kind=int, metavar="K", check=lambda v: v >= 1 and v % 2 == 1,
        absent=5,
        expected="an odd integer >= 1", label="first kernel size",
        help="simple_cnn's first kernel size")
    bn: bool = option(
        True, flag="--no-bn", label="batchnorm",
        help="simple_cnn without batchnorm (the chapter's first runs)")
    channels_last: bool = option(
        True, flag="--no-channels-last", label="channels_last memory order",
        help="keep NCHW memory order (channels_last is faster on CPU)")
    stats: bool = option(
        True, flag="--no-stats", label="activation and gradient statistics",
        help="record neither ActivationStats nor GradientStats (no layer diagnosis or plots)")
    tta: bool | None = option(
        None, flag="--tta", label="test-time augmentation", unset=_from_recipe("tta"),
        help="the result averages each unsure test image's prediction with its four 1-pixel "
             "shifts' (test-time augmentation); --no-tta: plain evaluation")
    checkpoint_every: int | None = option(
        None, flag="--checkpoint-every", kind=int, check=lambda v: v >= 1,
        expected="an integer >= 1", metavar="N", label="checkpoint every",
        unset="at each epoch's end", help="also checkpoint every N batches")
    size: int = option(
        28, flag="--size", kind=int, metavar="N", check=lambda v: v >= 1,
        expected="an integer >= 1", label="image size",
        help="image folders: resize every image to N x N")
    skip_bad: bool = option(
        False, flag="--skip-bad", label="skip unreadable images",
        help="image folders: leave out unreadable files (listed) instead of stopping")
    augment: bool = option(
        False, flag="--augment", label="augmentation",
        help="random crops and flips of training batches (for photos, not digits)")
    precision: str = option(
        "fp32", flag="--precision", kind=str, choices=("fp32", "bf16", "fp16"),
        label="precision", help="fp32, or mixed precision bf16 or fp16")
    nproc: int = option(
        1, flag="--nproc", kind=int, check=lambda v: v >= 1, expected="an integer >= 1",
        metavar="N", label="processes per machine", resumable=True,
        help="train in N processes per machine with DistributedDataParallel")
    sync_bn: bool = option(
        False, flag="--sync-bn", label="SyncBatchNorm",
        help="with --nproc: batchnorm statistics over all processes' batches (CUDA)")
    tensorboard: bool = option(
        False, flag="--tensorboard", label="TensorBoard event files", absent=False,
        help="also write TensorBoard event files into RUN_DIR/tensorboard (`tensorboard "
             "--logdir runs`; needs pip install convscope[tensorboard])")

    def __post_init__(self) -> None:
        recipe = recipes.recipe(self.recipe)
        for name, value in recipe.settings.items():  # what was not given comes from the recipe
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        for f in dataclasses.fields(self):
            f.metadata["option"].validate(f.name, getattr(self, f.name))
        device = resolve_device(self.device)
        if self.precision == "fp16" and device.type == "cpu":
            from convscope.precision import cpu_fp16_refusal

            refusal = cpu_fp16_refusal()
            if refusal:
                raise UsageError(refusal)
        if self.model != "simple_cnn" and (self.widths != DEFAULT_WIDTHS or self.first_ks != 5):
            raise UsageError(f"--widths and --first-ks shape simple_cnn; --model {self.model} "
                             f"has its own. Use --model simple_cnn with them")
        if self.model == "book_first":  # the chapter's first CNN has no batchnorm
            object.__setattr__(self, "bn", False)
        if self.bs < 2 and self.bn:
            raise UsageError(f"--bs: expected 2 or more with batchnorm (it normalises each "
                             f"batch by its own statistics, which one image does not have), "
                             f"received {self.bs}; or add --no-bn")
        if self.sync_bn and device.type != "cuda":
            raise UsageError("sync_bn needs --device cuda: torch's SyncBatchNorm runs only on "
                             "GPUs.")

    def resolved(self) -> TrainConfig:
        """The same config with `data` and `out` as absolute paths (what config.json keeps,
        so a run resumes from any working directory)."""
        from pathlib import Path

        data = None if self.data is None else str(Path(self.data).expanduser().resolve())
        model = self.model
        if model not in BUILT_IN_MODELS:
            path, _, name = model.rpartition(":")
            model = f"{Path(path).expanduser().resolve()}:{name}"
        return dataclasses.replace(self, data=data, model=model,
                                   out=str(Path(self.out).expanduser().resolve()))


def check_values(saved: dict) -> None:
    """Check a run folder's settings (a config.json's) as the options declare them, without
    the checks of this machine (a run trained on a GPU is read on a CPU): a UsageError names
    the first setting of the wrong type or out of range."""
    for name, opt in options().items():
        if name in saved:
            opt.validate(name, saved[name])


def options() -> dict[str, Option]:
    """Every setting's Option, by field name, in declaration order."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(TrainConfig)}


def with_absent(saved: dict) -> dict:
    """A config.json's settings, with each setting added since it was written set to what
    that run trained with (the Option's `absent`)."""
    if not isinstance(saved, dict):
        raise UsageError(f"expected a JSON object of settings, received a "
                         f"{type(saved).__name__}")
    return {**saved, **{name: opt.absent for name, opt in options().items()
                        if opt.absent is not None and name not in saved}}


def default(name: str) -> Any:
    return TrainConfig.__dataclass_fields__[name].default


def describe(name: str, value: Any) -> tuple[str, str]:
    """A setting as a reader wants it: (label, value in words)."""
    import json

    opt = options().get(name)
    if opt is None:
        return name, value if isinstance(value, str) else json.dumps(value)
    if value is None:
        return opt.label, opt.unset or "none"
    if isinstance(value, bool):
        return opt.label, "yes" if value else "no"
    return opt.label, value if isinstance(value, str) else json.dumps(value)


def resolve_device(name: str):
    """A torch.device for `name`, refusing one this machine does not have."""
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device: expected cpu, cuda or cuda:N, received {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device: CUDA is not available on this machine, received "
                         f"{name!r}. Use --device cpu.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device: no such GPU, received {name!r}; this machine has "
                         f"{torch.cuda.device_count()}.")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device: expected cpu, cuda or cuda:N, received {name!r}")
    return dev
