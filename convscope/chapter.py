"""The chapter's experiments replayed: simple_cnn trained five ways, as the book trains it, each
a normal run folder, then one page with the book's accuracy beside convscope's.

Chapter 13 of the fastai book trains the same CNN on MNIST again and again, changing one thing
at a time, and reads each run's activations to see why it failed or worked. The book's setup:
fastai's Adam (betas 0.9/0.99, eps 1e-5, weight decay 0.01: convscope's adamw), MNIST's test
set as the valid set, ActivationStats with histograms, simple_cnn = conv(1,8,ks=5),
conv(8,16), conv(16,32), conv(32,64), conv(64,10,act=False), stride 2, padding ks//2.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path

from convscope.config import TrainConfig
from convscope.errors import TrainingDivergedError
from convscope.files import atomic_write_bytes
from convscope.recipes import RECIPES


@dataclass(frozen=True)
class Step:
    """One experiment of the chapter, and what the book printed and showed for it."""

    name: str
    what: str
    settings: dict
    book_accuracy: tuple[float, ...]
    shows: tuple[int, ...]  # ActivationStats layer indexes the book draws (negative: from the end)
    lesson: str


STEPS = (
    Step("1-no-bn-bs64", "no batchnorm, bs 64, fit(1, 0.06): a constant learning rate",
         {"bn": False, "bs": 64, "schedule": "constant", "epochs": 1, "lr": 0.06},
         (0.1135,), (0, -2),
         "Started at a high learning rate, the deeper layers' ReLUs die within the first "
         "batches and the model learns nothing: their activations all sit at zero."),
    Step("2-no-bn-bs512", "no batchnorm, bs 512, fit(1, 0.06)",
         {"bn": False, "bs": 512, "schedule": "constant", "epochs": 1, "lr": 0.06},
         (0.1135,), (-2,),
         "A larger batch gives smoother gradients, but the high learning rate from the first "
         "step still kills the activations."),
    Step("3-no-bn-1cycle", "no batchnorm, bs 512, fit_one_cycle(1, 0.06)",
         {"bn": False, "bs": 512, "schedule": "one_cycle", "epochs": 1, "lr": 0.06},
         (0.9743,), (-2,),
         "Warming the learning rate up (1cycle) lets the model train, but its color_dim shows "
         "activations collapsing and recovering again and again."),
    Step("4-bn-1cycle", "batchnorm after each conv, fit_one_cycle(1, 0.06)",
         {"bn": True, "bs": 512, "schedule": "one_cycle", "epochs": 1, "lr": 0.06},
         (0.9864,), (-4,),
         "Batchnorm keeps every layer's activations in a steady range: a smooth color_dim, and "
         "a better model."),
    Step("5-bn-1cycle-5ep", "batchnorm, fit_one_cycle(5, 0.1): the book recipe",
         {"bn": True, "schedule": "one_cycle"},
         RECIPES["book"].book_accuracy, (-4,),
         "With batchnorm the model takes a higher learning rate, and five epochs reach the "
         "chapter's final accuracy."),
)

# a difference from the book's accuracy beyond this is said, not hidden
MUCH = 0.02


@dataclass
class Outcome:
    step: Step
    run_dir: Path
    accuracy: float | None = None
    seconds: float = 0.0
    failure: str | None = None


def run_chapter(out: str | Path = "runs/chapter", subset: int | None = None,
                device: str = "cpu", overwrite: bool = False, log=print) -> Path:
    """Train every step into `out`/<step name> and write `out`/chapter.html; return its path.

    A step that fails (it diverges, say) is shown as that step's result; the others still run.
    """
    from convscope import run_folder
    from convscope.errors import UsageError
    from convscope.run import train

    out = Path(out)
    earlier = [s.name for s in STEPS if run_folder.run_files(out / s.name)]
    if earlier and not overwrite:  # refused before any step trains, naming the chapter's way
        raise UsageError(f"--out: {str(out)!r} holds an earlier replay ({', '.join(earlier)}); "
                         f"`convscope chapter --out {run_folder.quoted(out)} --overwrite` "
                         f"replays it again, or choose another --out")
    outcomes = []
    for step in STEPS:
        # every step starts from the book recipe (every image every epoch, plain accuracy)
        # and changes what the chapter changes at that step
        cfg = TrainConfig(out=str(out / step.name), subset=subset, device=device, seed=0,
                          recipe="book", **step.settings)
        log(f"step {step.name}: {step.what}")
        done = Outcome(step, Path(cfg.out))
        start = time.perf_counter()
        try:
            result = train.run_training(cfg, log=log, overwrite=overwrite, indent="  ")
            done.accuracy = result.accuracy
        except TrainingDivergedError as e:
            done.failure = str(e)
            log(f"  step {step.name} diverged: {e}")
        done.seconds = time.perf_counter() - start
        outcomes.append(done)
    page = out / "chapter.html"
    atomic_write_bytes(page, render(outcomes, subset).encode())
    return page


def seen(o: Outcome, subset: int | None) -> str:
    """What this run of a step saw, against what the book printed: in line, or how far off,
    and, on a subset, that the book's effect may need more images to show."""
    book = " / ".join(f"{a:.2%}" for a in o.step.book_accuracy)
    if o.accuracy is None:
        return (f"it diverged, where the book printed {book}.")
    said = f"{o.accuracy:.2%} test accuracy, where the book printed {book}"
    low, high = min(o.step.book_accuracy), max(o.step.book_accuracy)
    if low - MUCH <= o.accuracy <= high + MUCH:
        return f"{said}: in line with the book."
    if o.accuracy > high:
        return f"{said}: higher than the book's."
    if subset:
        return (f"{said}: much lower. This replay trained on {subset:,} images and the book on "
                f"all 60,000, {60000 // subset}x as many steps per epoch: too few here for this "
                f"step to show what the book's did. Run `convscope chapter` without --subset "
                f"to see it.")
    return (f"{said}: much lower than the book's, on the same 60,000 images; see this step's "
            f"diagnosis below.")


def render(outcomes: list[Outcome], subset: int | None) -> str:
    from convscope import plots
    from convscope.diagnosis import diagnose
    from convscope.display import findings_html, table_html
    from convscope.report import CSS, Figures
    from convscope.run_folder import load_run

    figs = Figures()
    rows = []
    for o in outcomes:
        book = " / ".join(f"{a:.2%}" for a in o.step.book_accuracy)
        ours = f"{o.accuracy:.2%}" if o.accuracy is not None else "diverged"
        gap = ("" if o.accuracy is None else
               "much lower than the book's" if o.accuracy < min(o.step.book_accuracy) - MUCH
               else "much higher than the book's" if o.accuracy > max(o.step.book_accuracy)
               + MUCH else "in line")
        rows.append({"step": o.step.name, "training": o.step.what, "book": book,
                     "convscope": ours, "against the book": gap,
                     "step time (s), start to report": f"{o.seconds:.1f}"})
    scope = (f"on {subset:,} training images (the book trains on all 60,000, so a step's "
             f"effect may not show here: each step says)" if subset
             else "on all 60,000 training images, as the book does")
    out = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>convscope: "
           f"chapter 13 replayed</title><style>{CSS}</style></head><body>",
           "<h1>Chapter 13 replayed</h1>",
           f"<p>simple_cnn trained five ways {html.escape(scope)}, evaluated on MNIST's 10,000 "
           f"test images; each step is a run folder with its own report.</p>",
           table_html(rows, left=("step", "training", "against the book"))]
    for o in outcomes:
        out += [f"<h2>{html.escape(o.step.name)}: {html.escape(o.step.what)}</h2>",
                f"<p><b>What the book saw:</b> {html.escape(o.step.lesson)}</p>",
                f"<p><b>What this run saw:</b> {html.escape(seen(o, subset))}</p>"]
        if o.failure is not None:
            out += [f"<p><b>This step diverged:</b> {html.escape(o.failure)}</p>"]
            continue
        run = load_run(o.run_dir)
        out += [f"<p>Run folder: <code>{html.escape(str(o.run_dir))}</code> (report.html "
                f"there has the rest).</p>"]
        s = run.stats
        for idx in o.step.shows:
            if s is not None and s.batches and -len(s.layer_names) <= idx < len(s.layer_names):
                name = s.layer_names[idx]
                out += [figs.img(lambda s=s, idx=idx, h=run.history: plots.color_dim(
                    s, idx, recorder=h), f"{o.step.name} block {name} color_dim")]
        found = diagnose(stats=run.stats, history=run.history, gradients=run.gradients)
        out += ["<h3>Diagnosis</h3>", findings_html(found)]
    out.append("</body></html>")
    return figs.fill("\n".join(out))

