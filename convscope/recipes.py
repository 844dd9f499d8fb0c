"""Named recipes: sets of training settings a run starts from, declared once.

`book` is chapter 13's final run exactly as the book trains it, and the default: simple_cnn
with batchnorm, fastai's Adam defaults (AdamW: betas 0.9/0.99, eps 1e-5, weight decay 0.01),
`fit_one_cycle(5, 0.1)` at batch size 512, every image every epoch, plain evaluation.
`fast` goes beyond the book, by name: over 99% on MNIST's test set in fewer passes over the
images than the book's recipe (bench/time_to_99.py measures it against three full epochs).

A recipe is only option values: `convscope train --recipe fast --lr 0.03` (or
`TrainConfig(recipe="fast", lr=0.03)`) takes the recipe and overrides what is given, and
config.json records the recipe's name beside every resolved value. Importable without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from convscope.errors import UsageError


@dataclass(frozen=True)
class Recipe:
    """A named set of option values.

    Attributes:
        name: what `--recipe` takes.
        summary: one line: what it trains.
        settings: option values (TrainConfig field names).
        changes: for a recipe beyond the book, each thing it changes and why.
        book_accuracy: the test accuracies the book printed for this run (its two printings).
    """

    name: str
    summary: str
    settings: dict
    changes: tuple[str, ...] = ()
    book_accuracy: tuple[float, ...] = ()


RECIPES = {r.name: r for r in (
    Recipe("book", "the book's final run: fit_one_cycle(5, 0.1), batch size 512, every image "
           "every epoch, plain evaluation",
           {"epochs": 5, "lr": 0.1, "bs": 512, "hard": 1.0, "tta": False},
           book_accuracy=(0.9912, 0.9921)),
    Recipe("fast", "beyond the book: fit_one_cycle(3, 0.03), batch size 256, epochs after the "
           "first on the hardest 25% of the images, test-time augmentation of the unsure ones",
           {"epochs": 3, "lr": 0.03, "bs": 256, "hard": 0.25, "tta": True},
           changes=(
               "Batch size 256 and 3 epochs at lr 0.03: more steps per image seen.",
               "Epochs after the first train only on the quarter of the images with the highest "
               "loss when last seen (HardExamples): by the end of one epoch most digits are "
               "learned, and passing over them again teaches little.",
               "Test-time augmentation of the images the model is unsure of (top probability "
               "under 0.9): their prediction is averaged with that of their four 1-pixel "
               "shifts, so the ones near a class boundary get a second look.",
           )),
)}
DEFAULT = "book"
# the options a recipe sets; every other option has one default of its own
GOVERNED = ("epochs", "lr", "bs", "hard", "tta")
# what every recipe assumes of the options it does not set: a run that changes one of these
# is not the recipe as named any more, and says so
ASSUMED = {"schedule": "one_cycle", "bn": True, "model": "simple_cnn", "widths": "8,16,32,64",
           "first_ks": 5, "augment": False, "precision": "fp32"}


def recipe(name: str) -> Recipe:
    """The recipe called `name`, or a UsageError listing the names."""
    try:
        return RECIPES[name]
    except KeyError:
        raise UsageError(f"--recipe: expected one of {', '.join(RECIPES)}, received "
                         f"{name!r}") from None


def book_line(settings: dict) -> str:
    """What the book printed for the run these settings (a config's) trained, for beside
    ours: only when the run is a recipe's as named, on the data the book used (the whole
    of MNIST) with the book's model and schedule; "" otherwise."""
    name = settings.get("recipe", DEFAULT)
    book = RECIPES[name].book_accuracy if name in RECIPES else ()
    as_named = (settings.get("data") is None and settings.get("subset") is None
                and settings.get("valid_pct") is None and not overridden(settings))
    if not book or not as_named:
        return ""
    shown = " and ".join(f"{a:.2%}" for a in book)
    return f"the book: {shown} in its {'two printings' if len(book) > 1 else 'printing'}"


def overridden(settings: dict) -> dict[str, object]:
    """The settings whose value is not what the named recipe has or assumes:
    {name: the recipe's value}."""
    base = RECIPES.get(settings.get("recipe", DEFAULT))
    if base is None:
        return {}
    expected = {**ASSUMED, **base.settings}
    return {k: v for k, v in expected.items() if k in settings and settings[k] != v}
